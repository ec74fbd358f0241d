"""make image-test: build the training image without Docker and train a tiny cell in it.

    .venv/bin/python -m deployments.image_test [--base IMAGE]

1. tools: buildah and debootstrap, installed with apt-get when missing (root needed then).
2. base: with no --base (or $BASE_IMAGE), a stand-in for the registry's pytorch/pytorch
   base, which these machines cannot pull: a Debian root from debootstrap plus a venv with
   pyproject.toml's torch and torchvision pins. It is its own image,
   localhost/autolabel-testbase:<hash of its inputs>, so a rerun reuses it.
3. image: the real Dockerfile, `buildah bud --isolation chroot --layers --from BASE`
   (--from replaces the Dockerfile's FROM, whose production tag stays as it is).
4. checks, inside the image as its own user with no network: not root, no Prefect, no
   flows/, no credentials in the environment or on disk, and only a loopback interface.
5. two runs of the image's ENTRYPOINT on a tiny CPU cell: a mounted cell folder with no
   network (a new, empty network namespace: `unshare --net buildah run ...`), then an
   s3:// cell against a moto server this script starts on 127.0.0.1. That run needs the host's network namespace (the server listens on the
   host's loopback); the only endpoint it is given is that server, with throwaway keys.
6. the image's size and each stage's time.

pip inside the build reads the host's pip settings (`pip config list` and $PIP_*), written to
one pip.conf, with the local folders and files they name (find-links, file:// indexes, the
constraint file, the CA bundle) mounted read-only at the same paths.
Exit codes: 0 passed, 1 a stage failed (its command's output is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

from deployments.image_build import FROM_BASE_IMAGE, pinned

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/autolabel-train:image-test"
BASE_REPO = "localhost/autolabel-testbase"
CONTAINER_PREFIX = "autolabel-image-test-"
DEBIAN = {"suite": "bookworm", "mirror": "http://deb.debian.org/debian",
          "include": "python3,python3-venv,ca-certificates"}  # fmt: skip
VENV = "/opt/venv"
BASE_RECIPE = 1  # bump when build_base changes what it builds
TINY_OPTIONS = {"device": "cpu", "dataset": {"kind": "synthetic", "subjects": 12, "rows": 32, "cols": 64}}
# The folder run trains on the fsaverage cohort, which the image generates offline from what its
# packages ship (nilearn's fsaverage5, neuropythy's atlas and projection): what a benson2025 cell needs.
FSAVERAGE_OPTIONS = {"device": "cpu", "dataset": {"kind": "fsaverage", "subjects": 8, "rows": 32, "cols": 64}}
TINY_PLAN = [{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 1}]
PIP_PATH_KEYS = ("find-links", "index-url", "extra-index-url", "constraint", "cert")
# Files that hold credentials (netrc, git, PyPI); ~/.aws and ~/.docker are checked as folders.
CREDENTIAL_FILES = (".netrc", ".git-credentials", ".pypirc")


class StageFailed(Exception):
    """A stage's command failed; the message says which and shows its output."""


def say(line: str) -> None:
    print(f"image-test: {line}", flush=True)


def sh(argv: list[str], *, quiet: bool = False) -> str:
    """Run a command at the lowest CPU priority (the machine is shared); its stdout, or StageFailed."""
    run = subprocess.run(["nice", "-n", "19", *argv], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    if run.returncode != 0:
        tail = "\n".join(run.stdout.splitlines()[-40:])
        raise StageFailed(f"{' '.join(argv[:4])} ... exited {run.returncode}:\n{tail}")
    if not quiet and run.stdout.strip():
        print("\n".join("    " + ln for ln in run.stdout.strip().splitlines()[-12:]), flush=True)
    return run.stdout


def ensure_tools() -> None:
    """buildah and debootstrap from Debian's packages, when either is missing."""
    if shutil.which("buildah") and shutil.which("debootstrap"):
        return
    if os.geteuid() != 0:
        raise StageFailed("buildah or debootstrap is missing: run as root, or apt-get install buildah debootstrap")
    say("installing buildah and debootstrap with apt-get")
    sh(["apt-get", "update", "-qq"], quiet=True)
    sh(["apt-get", "install", "-y", "-qq", "buildah", "debootstrap", "fuse-overlayfs", "uidmap"], quiet=True)


# ----------------------------------------------------------------------------- pip inside the build


def pip_settings() -> dict[str, str]:
    """The host's effective pip options (config files, then $PIP_* which override them)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    settings = {}
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(("global.", "install.")):
            settings[key.split(".", 1)[1]] = value.strip().strip("'\"")
    for name, value in os.environ.items():
        if name.startswith("PIP_") and name != "PIP_CONFIG_FILE":
            settings[name[4:].lower().replace("_", "-")] = value
    return settings


def local_paths(settings: dict[str, str]) -> list[str]:
    """Folders and files on this machine that the pip settings name."""
    found = []
    for key in PIP_PATH_KEYS:
        for token in settings.get(key, "").split():
            path = token.removeprefix("file://").rstrip("/")
            if key.endswith("index-url") and path.startswith("/"):
                path = os.path.dirname(path)  # a file index's pages link to files beside it (../../files/)
            if path.startswith("/") and os.path.exists(path) and path not in found:
                found.append(path)
    return found


def pip_volumes(workdir: Path) -> list[str]:
    """`-v` arguments that give pip in a RUN step the host's package sources, read-only."""
    settings = pip_settings()
    conf = workdir / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
    volumes = ["-v", f"{conf}:/etc/pip.conf:ro"]
    for path in local_paths(settings):
        volumes += ["-v", f"{path}:{path}:ro"]
    if os.path.isdir("/etc/ssl/certs"):
        volumes += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    return volumes


# ----------------------------------------------------------------------------- images


def torch_pins(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """pyproject.toml's pins of the packages the base image provides (torch, torchvision)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = [d for d in deps if pinned(d)[0] in FROM_BASE_IMAGE]
    if len(pins) != len(FROM_BASE_IMAGE) or any(pinned(p)[1] is None for p in pins):
        raise StageFailed(f"{pyproject}: [project] dependencies must pin {' and '.join(FROM_BASE_IMAGE)} with ==")
    return pins


def base_tag(pins: list[str]) -> str:
    """The stand-in base's name: changes when anything it is built from changes."""
    inputs = json.dumps({"debian": DEBIAN, "pins": pins, "recipe": BASE_RECIPE}, sort_keys=True)
    return f"{BASE_REPO}:{hashlib.sha256(inputs.encode()).hexdigest()[:16]}"


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def drop_stale_bases(keep: str) -> None:
    """Older stand-in bases are ~6 GB each; only the current one is kept."""
    listed = subprocess.run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True)
    for name in listed.stdout.split():
        if name.startswith(BASE_REPO + ":") and name != keep:
            subprocess.run(["buildah", "rmi", name], capture_output=True)


def build_base(tag: str, pins: list[str], volumes: list[str]) -> None:
    """Debian root (debootstrap) + a venv with the torch pins, committed as ``tag``."""
    subprocess.run(["buildah", "rm", CONTAINER_PREFIX + "base"], capture_output=True)  # a killed build's leftover
    ctr = sh(["buildah", "from", "--name", CONTAINER_PREFIX + "base", "scratch"], quiet=True).strip()
    try:
        root = sh(["buildah", "mount", ctr], quiet=True).strip()
        say(f"debootstrap {DEBIAN['suite']} into the base")
        sh(["debootstrap", "--variant=minbase", f"--include={DEBIAN['include']}",
            DEBIAN["suite"], root, DEBIAN["mirror"]], quiet=True)  # fmt: skip
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            sh(["find", os.path.join(root, junk), "-type", "f", "-delete"], quiet=True)
        say(f"installing {' '.join(pins)} into {VENV}")
        run = ["buildah", "run", "--isolation", "chroot", *volumes, ctr, "--"]
        sh([*run, "python3", "-m", "venv", VENV], quiet=True)
        sh([*run, f"{VENV}/bin/pip", "install", "--no-cache-dir", "-q", *pins], quiet=True)
        path = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        sh(["buildah", "config", "--env", f"PATH={path}", "--cmd", "python3", ctr], quiet=True)
        sh(["buildah", "commit", "--rm", ctr, tag], quiet=True)
    except BaseException:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        raise


def build_image(base: str, volumes: list[str]) -> None:
    """The real Dockerfile on ``base``; --layers reuses every step whose inputs did not change."""
    sh(["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "docker", "--pull=never",
        "--build-arg", f"BASE_IMAGE={base}", *volumes, "-t", IMAGE, "-f", str(ROOT / "Dockerfile"), str(ROOT)])  # fmt: skip


def image_config(name: str) -> dict:
    return json.loads(sh(["buildah", "inspect", "--type", "image", name], quiet=True))["OCIv1"]["config"]


def image_size(name: str) -> str:
    """The image's size as buildah reports it (decimal units, three digits: "6.01 GB")."""
    return json.loads(sh(["buildah", "images", "--json", name], quiet=True))[0]["size"]


# ----------------------------------------------------------------------------- running the image


@contextlib.contextmanager
def container(image: str, name: str) -> Iterator[str]:
    subprocess.run(["buildah", "rm", CONTAINER_PREFIX + name], capture_output=True)  # a crashed run's leftover
    ctr = sh(["buildah", "from", "--pull=never", "--name", CONTAINER_PREFIX + name, image], quiet=True).strip()
    try:
        yield ctr
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def run_in(ctr: str, argv: list[str], *, network: bool, volumes: tuple[str, ...] = (), env: tuple[str, ...] = (),
           user: str | None = None) -> str:
    """``argv`` in the container, as ``user`` or else the image's USER (buildah run's default).

    A chroot container shares buildah's network namespace (buildah 1.28 refuses any --network
    but host with --isolation chroot), so with network=False buildah itself starts in a new,
    empty one (unshare --net): the container sees only a loopback that is down.
    """
    flags = ["--isolation", "chroot", *(["--user", user] if user else [])]
    for v in volumes:
        flags += ["-v", v]
    for e in env:
        flags += ["-e", e]
    prefix = [] if network else ["unshare", "--net", "--"]
    return sh([*prefix, "buildah", "run", *flags, ctr, "--", *argv], quiet=True)


INSIDE_CHECK = r"""
import importlib.util, os, re, socket, sys
port, want_uid = int(sys.argv[1]), int(sys.argv[2])
names, problems = set(sys.argv[3].split(",")), []
if os.getuid() != want_uid:
    problems.append(f"runs as uid {os.getuid()}, not {want_uid}")
for module in ("prefect", "flows", "prefect_aws"):
    if importlib.util.find_spec(module):
        problems.append(f"{module} is importable")
secret = re.compile(r"^AWS_|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)
problems += [f"environment holds {k}" for k in os.environ if secret.search(k)]
for top in ("/root", "/home", "/opt/autolabel", "/etc", "/tmp"):
    for folder, dirs, files in os.walk(top, onerror=lambda e: None):
        if os.path.basename(folder) in (".aws", ".docker") and files:
            problems.append(f"{folder} holds {files}")
        problems += [f"{folder}/{f}: a credentials file" for f in files if f in names]
        for f in files:
            try:
                text = open(os.path.join(folder, f), "rb").read(1 << 20)
            except OSError:
                continue
            if re.search(rb"AKIA[0-9A-Z]{16}", text):
                problems.append(f"{folder}/{f}: holds an AWS access key id")
interfaces = [ln.split(":")[0].strip() for ln in open("/proc/net/dev").read().splitlines()[2:]]
if interfaces != ["lo"]:
    problems.append(f"network interfaces {interfaces}, expected only lo")
try:
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    problems.append(f"reached the host's 127.0.0.1:{port}")
except OSError:
    pass
print("\n".join(problems) or "ok: not root, no prefect/flows, no credentials, no network")
"""


def check_inside(image: str, moto_port: int) -> None:
    """The image's contents with no network (the moto port must be unreachable): as the image's
    USER, and again as root, who can read every folder a credentials file could hide in."""
    user = image_config(image).get("User") or "0"
    if user.split(":")[0] in ("0", "root"):
        raise StageFailed(f"the image's USER is {user}: the Dockerfile must end with a non-root USER")
    with container(image, "check") as ctr:
        for who in dict.fromkeys((user, "0:0")):
            out = run_in(ctr, ["python", "-c", INSIDE_CHECK, str(moto_port), who.split(":")[0],
                               ",".join(CREDENTIAL_FILES)], network=False, user=who).strip()  # fmt: skip
            if not out.startswith("ok:"):
                raise StageFailed(f"the image fails its checks as user {who}:\n{out}")
    say(out + f" (as user {user} and as root)")


def write_tiny_cell(cell: Path, options: dict = TINY_OPTIONS) -> None:
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "options.json").write_text(json.dumps(options))
    (cell / "plan.json").write_text(json.dumps(TINY_PLAN))


def metrics_line(cell: Path) -> str:
    from autolabel.celldir import read_metrics

    metrics = read_metrics(cell)
    if metrics is None or isinstance(metrics, str) or metrics.status != "complete":
        raise StageFailed(f"{cell}: no complete metrics.json after the run ({metrics})")
    return (f"status={metrics.status} mean_dice={metrics.mean_dice:.4f} epochs={metrics.epochs} "
            f"device={metrics.device} wall_seconds={metrics.wall_seconds:.2f}")  # fmt: skip


def run_folder_cell(image: str, work: Path) -> str:
    """The ENTRYPOINT on a mounted cell folder of the fsaverage cohort, with no network at all."""
    cell = work / "folder-cell"
    write_tiny_cell(cell, FSAVERAGE_OPTIONS)
    uid, _, gid = image_config(image).get("User", "0").partition(":")
    os.chown(cell, int(uid), int(gid or uid))
    entry = image_config(image)["Entrypoint"]
    with container(image, "folder") as ctr:
        out = run_in(ctr, [*entry, "/cells/tiny"], network=False, volumes=(f"{cell}:/cells/tiny",))
    print("    " + out.strip().splitlines()[-1], flush=True)
    return metrics_line(cell)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Throwaway keys for the local moto server only; boto3 finds them in the environment, here and in the container.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "image-test", "AWS_SECRET_ACCESS_KEY": "image-test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


@contextlib.contextmanager
def moto_server(port: int) -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1:port; yields the environment that points boto3 at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per S3 request
    env = MOTO_ENV | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def run_s3_cell(image: str, work: Path, env: dict[str, str]) -> str:
    """The ENTRYPOINT on s3://image-test/cells/tiny at the local moto server (host loopback only)."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="image-test")
    s3.put_object(Bucket="image-test", Key="cells/tiny/options.json", Body=json.dumps(TINY_OPTIONS))
    s3.put_object(Bucket="image-test", Key="cells/tiny/plan.json", Body=json.dumps(TINY_PLAN))
    entry = image_config(image)["Entrypoint"]
    with container(image, "s3") as ctr:
        out = run_in(ctr, [*entry, "s3://image-test/cells/tiny"], network=True, env=tuple(f"{k}={v}" for k, v in env.items()))
    print("    " + out.strip().splitlines()[-1], flush=True)
    back = work / "s3-cell"
    back.mkdir()
    (back / "metrics.json").write_bytes(s3.get_object(Bucket="image-test", Key="cells/tiny/metrics.json")["Body"].read())
    return metrics_line(back)


# ----------------------------------------------------------------------------- main


def timed(times: dict[str, float], stage: str, fn, *args):
    start = time.monotonic()
    result = fn(*args)
    times[stage] = time.monotonic() - start
    say(f"{stage}: {times[stage]:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.image_test", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=os.environ.get("BASE_IMAGE") or None, metavar="IMAGE",
                        help="base image in place of the Dockerfile's FROM (default $BASE_IMAGE, else the "
                             "stand-in built here from Debian and the pinned wheels)")  # fmt: skip
    args = parser.parse_args(argv)
    times: dict[str, float] = {}
    start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="image-test-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)  # the image's user reads the mounted cell below it
            timed(times, "tools", ensure_tools)
            volumes = pip_volumes(work)
            base = args.base
            if base is None:
                base = base_tag(torch_pins())
                if image_exists(base):
                    say(f"base {base}: cached")
                else:
                    timed(times, "base build", build_base, base, torch_pins(), volumes)
                drop_stale_bases(keep=base)
            say(f"image {IMAGE} from the Dockerfile on {base}")
            timed(times, "image build", build_image, base, volumes)
            port = free_port()
            with moto_server(port) as env:
                timed(times, "checks (no network)", check_inside, IMAGE, port)
                say("folder cell, no network: " + timed(times, "folder run", run_folder_cell, IMAGE, work))
                line = timed(times, "s3 run", run_s3_cell, IMAGE, work, env)
                say(f"s3 cell, moto at {env['AWS_ENDPOINT_URL']}, host network: {line}")
    except StageFailed as e:
        print(f"image-test: FAILED: {e}", file=sys.stderr)
        return 1
    say(f"image size {image_size(IMAGE)} (its base {base}: {image_size(base)})")
    say("times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()) + f"; total {time.monotonic() - start:.1f} s")
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
