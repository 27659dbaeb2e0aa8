"""Rebuilding a ~30-package environment on a node: cold build and cache hit, uv vs
pip, as a venv (process runtime) and as an image (docker runtime).

    python -m bench.envbuild [--packages "requests rich ..."] [--repeat R] [--json]

The packages (default: 16 common ones, which with their dependencies are ~30
wheels including numpy and sympy) are downloaded once from PyPI into
``bench/out/wheels``; every build then installs from that directory with
``--no-index``, so the network is out of the numbers and both installers read
the same files. The spec is what ``qsub --env auto`` captures for a venv with
exactly those wheels: exact pins, ``--no-deps``.

* ``uv`` cold: a fresh cache directory *and* a fresh uv cache (the worst case:
  a node that never saw these wheels); ``uv`` warm: a fresh env cache but uv's
  own cache kept (a node that built another environment with them);
* ``pip`` cold: a fresh env cache;
* hit: ``EnvCache.ensure`` again (what a job pays when its venv exists);
* image cold/hit: ``envimage.ensure_image`` FROM the test python image (pip in
  the engine's build), after removing the tag; then again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import docker

from bench._daemon import ROOT
from nodeagent.env.cache import EnvCache
from nodeagent.env.image import ensure_image, image_tag
from schedd.protocol import EnvPackage, EnvPython, EnvSpec
from tests.dockerimages import python_image

DEFAULT = ("requests rich click pyyaml jinja2 tqdm python-dateutil pydantic attrs packaging filelock fsspec "
           "numpy networkx sympy protobuf")
WHEELS = ROOT / "bench" / "out" / "wheels"


def download(packages: str) -> list[Path]:
    WHEELS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(WHEELS),
                    *packages.split()], check=True)
    return sorted(WHEELS.glob("*.whl"))


def spec_of(wheels: list[Path]) -> EnvSpec:
    pins = {}
    for w in wheels:
        name, version = w.name.split("-")[:2]
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    v = sys.version_info
    return EnvSpec(python=EnvPython(f"{v.major}.{v.minor}.{v.micro}", base=getattr(sys, "_base_executable", sys.executable)),
                   packages=[EnvPackage(n, ver) for n, ver in sorted(pins.items())])


def _venv(spec: EnvSpec, installer: str, uv_cache: Path | None) -> tuple[float, float]:
    """(cold build s, hit s) in a fresh env cache."""
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        environ = dict(os.environ, PIP_FIND_LINKS=str(WHEELS), PIP_NO_INDEX="1",
                       PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if uv_cache is not None:
            environ["UV_CACHE_DIR"] = str(uv_cache)
        cache = EnvCache(Path(tmp), installer=installer, environ=environ)
        cold = cache.ensure(spec)
        cold.release()
        assert cold.built, "a fresh cache must build"
        hit = cache.ensure(spec)
        hit.release()
        assert not hit.built
        return cold.seconds, hit.seconds


def _image(spec: EnvSpec, api: Any, base: str) -> tuple[float, float]:
    tag = image_tag(api.inspect_image(base)["Id"], spec)
    try:
        api.remove_image(tag, force=True)
    except docker.errors.ImageNotFound:
        pass
    environ = dict(os.environ, PIP_FIND_LINKS=str(WHEELS), PIP_NO_INDEX="1")
    with tempfile.TemporaryDirectory(prefix="bench-img-") as tmp:
        cold = ensure_image(api, base, spec, Path(tmp), environ)
        hit = ensure_image(api, base, spec, Path(tmp), environ)
    assert cold.built and not hit.built
    return cold.seconds, hit.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.envbuild", description=__doc__.split("\n\n")[0])
    p.add_argument("--packages", default=DEFAULT)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-docker", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    wheels = download(args.packages)
    spec = spec_of(wheels)
    r: dict[str, Any] = {"wheels": len(wheels), "wheel_mb": round(sum(w.stat().st_size for w in wheels) / 2**20, 1)}
    runs: dict[str, list[tuple[float, float]]] = {"uv_cold": [], "uv_warm": [], "pip": [], "image": []}
    with tempfile.TemporaryDirectory(prefix="bench-uvcache-") as warm:
        _venv(spec, "uv", Path(warm))  # fills the kept uv cache
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-uvcold-") as cold:
                runs["uv_cold"].append(_venv(spec, "uv", Path(cold)))
            runs["uv_warm"].append(_venv(spec, "uv", Path(warm)))
            runs["pip"].append(_venv(spec, "pip", None))
            if not args.no_docker:
                api = docker.from_env().api
                runs["image"].append(_image(spec, api, python_image(docker.from_env())))
    for name, vals in runs.items():
        if vals:
            r[f"{name}_build_s"] = round(median(v[0] for v in vals), 2)
            r[f"{name}_hit_ms"] = round(1000 * median(v[1] for v in vals), 1)
    r["pip_vs_uv_cold"] = round(r["pip_build_s"] / r["uv_cold_build_s"], 1)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['wheels']} wheels, {r['wheel_mb']} MB")
        for name in runs:
            if f"{name}_build_s" in r:
                print(f"{name:>8}: build {r[f'{name}_build_s']:6.2f} s   hit {r[f'{name}_hit_ms']:6.1f} ms")
        print(f"pip / uv (cold): {r['pip_vs_uv_cold']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
