"""Downloading an official CIFAR archive once, checked against its md5."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request

from pcjax.data.prepare.archive import CIFAR
from pcjax.data.prepare.errors import PrepareError


def download(name: str, data_dir: str) -> str:
    """The official archive of `name`, downloaded into <data_dir>/downloads/ unless already there.

    Raises:
      PrepareError: offline or the download failed (the message says to pass --archive), or the
        downloaded file's checksum is wrong.
    """
    layout = CIFAR[name]
    target = os.path.join(data_dir, "downloads", layout.filename)
    if os.path.exists(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".part"
    try:
        with urllib.request.urlopen(layout.url, timeout=60) as response, open(partial, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as e:
        reason = getattr(e, "reason", e)
        raise PrepareError(
            f"cannot download {layout.url} ({reason}); on a machine without internet, copy "
            f"{layout.filename} from one that has it and pass --archive PATH"
        ) from None
    with open(partial, "rb") as f:
        md5 = hashlib.file_digest(f, "md5").hexdigest()
    if md5 != layout.md5:
        os.remove(partial)
        raise PrepareError(f"{layout.url}: downloaded file has md5 {md5}, expected {layout.md5}")
    os.replace(partial, target)
    return target
