"""`greenroom deploy`'s rollout options (`--canary 5,25,50,100 --step 30s`, `--shadow 10
--shadow-for 60s`) and the live lines of a canary's steps for `--wait`."""

import argparse
import re
from typing import Any

from schemas.rollout import RolloutConfig

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """`30s`, `2m`, `1.5h` or a plain number of seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if found is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def percents(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of percents: {text!r} "
                                         "(e.g. 5,25,50,100)") from None


def add_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--canary", type=percents, metavar="P1,P2,...",
                     help="canary rollout: the new generation takes these percents in turn")
    cmd.add_argument("--step", type=seconds, metavar="DURATION",
                     help="how long each canary step lasts at least (e.g. 30s)")
    cmd.add_argument("--min-requests", type=int,
                     help="candidate requests each canary step is judged on, at least")
    cmd.add_argument("--max-p99-ratio", type=float, metavar="R",
                     help="a canary step fails when the new generation's p99 passes R times "
                          "the serving one's (default 1.5)")
    cmd.add_argument("--p99-slack-ms", type=float, metavar="MS",
                     help="... unless within MS of it (default 1)")
    cmd.add_argument("--shadow", type=float, metavar="PERCENT",
                     help="shadow rollout: mirror this percent of requests to the new "
                          "generation, then switch")
    cmd.add_argument("--shadow-for", type=seconds, metavar="DURATION",
                     help="how long the shadow mirrors (e.g. 60s)")


def config(args: argparse.Namespace) -> RolloutConfig | None:
    """The `config.rollout` the options ask for (None: the server's default, green)."""
    if args.canary is not None and args.shadow is not None:
        raise argparse.ArgumentTypeError("--canary and --shadow are two strategies: one")
    canary: dict[str, Any] = {"steps": args.canary, "step_s": args.step,
                              "min_requests": args.min_requests,
                              "max_p99_ratio": args.max_p99_ratio,
                              "p99_slack_ms": args.p99_slack_ms}
    if any(v is not None for v in canary.values()):
        return RolloutConfig.model_validate({"strategy": "canary", "canary": {
            k: v for k, v in canary.items() if v is not None}})
    if args.shadow is not None or args.shadow_for is not None:
        shadow = {"percent": args.shadow, "duration_s": args.shadow_for}
        return RolloutConfig.model_validate({"strategy": "shadow", "shadow": {
            k: v for k, v in shadow.items() if v is not None}})
    return None


def _figures(f: dict[str, Any]) -> str:
    rate = f.get("error_rate")
    p99 = f.get("p99_ms")
    return (f"gen {f.get('generation')}: {f.get('requests', 0)} req, errors "
            f"{'-' if rate is None else f'{rate:.1%}'}, p99 "
            f"{'-' if p99 is None else f'{p99:.1f} ms'}")


def step_lines(metadata: dict[str, Any]) -> list[str]:
    """One line per canary step so far (the last may be the one running), or the shadow's
    figures: both generations' requests, error rate and p99."""
    rollout = metadata.get("rollout")
    if not isinstance(rollout, dict):
        return []
    if rollout.get("strategy") == "shadow" and "candidate" in rollout:
        cosine = rollout.get("mean_cosine")
        return [f"shadow {rollout.get('percent')} %: {_figures(rollout['serving'])} | "
                f"{_figures(rollout['candidate'])}, mean cosine "
                f"{'-' if cosine is None else f'{cosine:.4f}'}"]
    lines = []
    for step in rollout.get("steps", []):
        verdict = {"pass": "passed", "fail": "FAILED", "wait": "judging"}.get(
            step.get("verdict"), step.get("verdict"))
        line = (f"canary {step.get('weight'):>3} % {verdict:<7} "
                f"{_figures(step.get('serving', {}))} | {_figures(step.get('candidate', {}))}")
        if step.get("verdict") == "fail":
            line += " — " + "; ".join(step.get("reasons", []))
        lines.append(line)
    return lines
