"""The smallest model archive an upload accepts."""

import io
import tarfile


def tiny_model_archive() -> bytes:
    """A tar.gz with `config.json` and `model.safetensors`: what an upload needs to pass."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in (("config.json", b"{}"), ("model.safetensors", b"weights")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()
