"""Build-time helpers of the training image (Dockerfile); they run inside `docker build`.

    python deployments/image_build.py requirements pyproject.toml > requirements.txt
    python deployments/image_build.py weights /opt/autolabel/weights

`requirements` prints pyproject.toml's [project] dependencies minus torch and torchvision,
which the CUDA base image provides; it exits 1, naming both versions, if the base image's
copies differ from the pins, so the image never trains on other versions than the tests.
`weights` downloads torchvision's ImageNet ResNet-18/34 files under their own names
(resnet18-f37072fd.pth, resnet34-b627a593.pth), the names autolabel/model.py looks for;
the trainer itself never downloads.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Provided by the base image (built for CUDA 12.6); pip would otherwise fetch PyPI's CUDA 13 build.
FROM_BASE_IMAGE = ("torch", "torchvision")


def pinned(requirement: str) -> tuple[str, str | None]:
    """'torch==2.14.1' -> ('torch', '2.14.1'); an unpinned requirement -> (name, None)."""
    name, sep, ver = requirement.partition("==")
    return name.strip().lower(), (ver.strip() if sep else None)


def installed(name: str) -> str | None:
    """The installed version without its local label ('2.14.1+cu126' -> '2.14.1')."""
    try:
        return version(name).split("+")[0]
    except PackageNotFoundError:
        return None


def image_requirements(pyproject: Path) -> list[str]:
    """The requirements pip must install on top of the base image; SystemExit on a drifted base."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    rest = []
    for req in deps:
        name, want = pinned(req)
        if name not in FROM_BASE_IMAGE:
            rest.append(req)
        elif installed(name) != want:
            raise SystemExit(
                f"{pyproject}: pins {name}=={want} but the base image has {installed(name)}; "
                "change the Dockerfile's FROM tag to a pytorch/pytorch image with that version"
            )
    return rest


def download_weights(dest: Path) -> list[Path]:
    """Fetch the ImageNet weights, each checked against the sha256 prefix in its file name."""
    import torch.hub
    import torchvision.models as models

    dest.mkdir(parents=True, exist_ok=True)
    got = []
    for weights in (models.ResNet18_Weights.IMAGENET1K_V1, models.ResNet34_Weights.IMAGENET1K_V1):
        name = weights.url.rsplit("/", 1)[1]  # resnet18-f37072fd.pth
        target = dest / name
        torch.hub.download_url_to_file(weights.url, str(target), hash_prefix=name.split("-")[1].split(".")[0])
        got.append(target)
    return got


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "requirements":
        print("\n".join(image_requirements(Path(args[1]))))
        return 0
    if len(args) == 2 and args[0] == "weights":
        for path in download_weights(Path(args[1])):
            print(f"{path} {path.stat().st_size} bytes")
        return 0
    print("usage: image_build.py requirements PYPROJECT | weights DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
