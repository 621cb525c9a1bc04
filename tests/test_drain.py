"""The drain's count of requests still inside the pipeline, from a /metrics scrape."""

from armorm import metrics
from armorm.drain import TRITON_FAILURES, draining, requests_in_pipeline
from armorm.prometheus import parse


def test_requests_in_pipeline_counts_admitted_minus_every_way_out():
    text = f"""
# TYPE {metrics.ADMITTED} counter
{metrics.ADMITTED} 40
{metrics.COMPLETED} 30
{metrics.ABORTED}{{model="armorm_backbone"}} 2
{metrics.ABORTED}{{model="armorm_gating"}} 1
{TRITON_FAILURES}{{model="armorm_backbone",reason="REJECTED",version="1"}} 3
{TRITON_FAILURES}{{model="armorm_backbone",reason="BACKEND",version="1"}} 5
{TRITON_FAILURES}{{model="armorm_transform",reason="CANCELED",version="1"}} 1
{TRITON_FAILURES}{{model="armorm_tokenizer",reason="REJECTED",version="1"}} 7
{TRITON_FAILURES}{{model="armorm",reason="OTHER",version="1"}} 9
"""
    # tokenizer and ensemble failures never entered the pipeline; BACKEND is the models' own (ABORTED)
    assert requests_in_pipeline(parse(text)) == 40 - 30 - 2 - 1 - 3 - 1


def test_nothing_scraped_means_nothing_in_flight():
    assert requests_in_pipeline({}) == 0


def test_draining_follows_the_flag_file(tmp_path):
    flag = tmp_path / "draining"
    assert not draining({})
    assert not draining({"ARMORM_DRAIN_FLAG": str(flag)})
    flag.touch()
    assert draining({"ARMORM_DRAIN_FLAG": str(flag)})


def test_a_drain_without_readable_metrics_gives_up_at_once(tmp_path):
    from armorm.server import TritonServer, free_port

    server = TritonServer(tmp_path, metrics_port=free_port())  # nothing listens there
    try:
        assert server.drain(timeout=30.0) is None
        assert server.drain_flag.exists()  # the tokenizer would refuse new requests all the same
    finally:
        server.drain_flag.unlink(missing_ok=True)
