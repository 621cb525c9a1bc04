"""armorm-mixture: name a mixture of a repository's reward models, served in one call.

    armorm-mixture build/repository helpful armorm=1 fsfairx=0.5 [--standardize fsfairx=MEAN,STD]

writes the models `helpful` (messages) and `helpful_text` (templated text): each member's score (`member_scores`,
in the order given) and Σ weight·score (`score`), a member with --standardize entering as (score − MEAN) / STD.
Members are the repository's ArmoRM and Bradley–Terry models (reward_models.json); they run concurrently.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from armorm.model.mixture import MIXTURE_FILE, Member, Mixture
from armorm_client import contract
from armorm_client.steering import parse_weights
from armorm_export.model_files import (
    TEMPLATES,
    apply_contract,
    read_config,
    read_manifest,
    set_parameter,
    update_manifest,
    write_config,
)

SCOREABLE = ("armorm", "bradley_terry")  # kinds whose ensemble answers `score` for `messages`


def write_mixture(repository: Path, name: str, members: dict[str, float],
                  statistics: dict[str, tuple[float, float]] | None = None) -> list[str]:
    from armorm_export.kinds import check_model_name

    statistics = statistics or {}
    manifest = read_manifest(repository)
    check_model_name(name, repository, "mixture")
    for member in [*members, *statistics]:
        if manifest.get(member, {}).get("kind") not in SCOREABLE or member.endswith("_text"):
            raise ValueError(f"{member!r} is not a reward model of {repository} that takes messages: "
                             f"{', '.join(m for m, e in manifest.items() if e['kind'] in SCOREABLE)}")
    unknown = sorted(set(statistics) - set(members))
    if unknown:
        raise ValueError(f"--standardize names {unknown}, which are not members")
    mixture = Mixture(tuple(Member(m, w, *statistics.get(m, (0.0, 1.0))) for m, w in members.items()))
    served = {contract.MIXTURE: name, contract.MIXTURE_TEXT: f"{name}_text"}
    for spec, model in served.items():
        folder = repository / model
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(TEMPLATES / contract.MIXTURE.name, folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        config = read_config(folder / "config.pbtxt")
        config.name = model
        apply_contract(config, spec)
        form = spec.inputs[0].name
        set_parameter(config, "form", form)
        write_config(folder / "config.pbtxt", config, f"mixture {name}, form {form}")
        mixture.save(folder / "1" / MIXTURE_FILE)
        if form == contract.TEXT.name:  # Llama-3's template, to read templated text back into messages
            shutil.copytree(reader_tokenizer(repository, manifest, mixture), folder / "1" / contract.TOKENIZER_DIR)
    update_manifest(repository, dict.fromkeys(served.values(), {"kind": "mixture", "members": list(mixture.names)}))
    return list(served.values())


def reader_tokenizer(repository: Path, manifest: dict, mixture: Mixture) -> Path:
    """A member's tokenizer files (ArmoRM's first): every served kind reads Llama chat templates."""
    for member in sorted(mixture.names, key=lambda m: manifest[m]["kind"] != "armorm"):
        step = contract.TOKENIZER.name if manifest[member]["kind"] == "armorm" else f"{member}_tokenizer"
        folder = repository / step / "1" / contract.TOKENIZER_DIR
        if folder.is_dir():
            return folder
    raise ValueError("no member's tokenizer files were found to read templated text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="armorm-mixture", description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("name", help="the mixture's model name")
    parser.add_argument("members", nargs="+", help="member=weight, e.g. armorm=1 fsfairx=0.5")
    parser.add_argument("--standardize", action="append", default=[], metavar="MEMBER=MEAN,STD",
                        help="enter this member as (score - MEAN) / STD")
    args = parser.parse_args(argv)
    try:
        members = parse_weights(",".join(args.members))
        statistics = {}
        for item in args.standardize:
            member, _, values = item.partition("=")
            mean, _, std = values.partition(",")
            statistics[member.strip()] = (float(mean), float(std))
        written = write_mixture(args.repository, args.name, members, statistics)
    except ValueError as err:
        print(f"[mixture] FAILED: {err}", file=sys.stderr)
        return 1
    print(f"[mixture] wrote {', '.join(written)} in {args.repository}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
