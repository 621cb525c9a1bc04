"""armorm-serve: the supervisor, one tritonserver process, and armorm-serve as a child process."""
