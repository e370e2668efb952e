"""Synthetic data generation tells its progress: plain log lines without a terminal, a tqdm bar in one,
and the files it writes do not depend on either."""
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from plsc.data.synthetic import ensure_quickstart_data
from plsc.data.synthetic.fairness import ensure_fairness_data
from plsc.data.synthetic.quickstart import MANIFEST_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
# 3 classes x 4 images and 6 pairs: 12 training images, 12 pair images.
SIZES = ["--num-classes", "3", "--images-per-class", "4", "--pairs", "6"]


def run_generator(out_dir, stderr):
    """`python -m plsc.data.synthetic` over 2 workers; returns (exit code, stdout text)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "plsc.data.synthetic", "--out", str(out_dir), *SIZES,
                             "--num-workers", "2"], stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=300)
    return result.returncode, result.stdout.decode()


def written_files(root):
    """{relative path: bytes} of the data files, and {relative path: parameters} of the manifests (whose
    summaries name the output directory)."""
    files, manifests = {}, {}
    for path in sorted(Path(root).rglob("*")):
        if path.name == MANIFEST_NAME:
            manifests[str(path.relative_to(root))] = json.loads(path.read_text())["parameters"]
        elif path.is_file():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files, manifests


def test_without_a_terminal_progress_is_plain_lines_and_the_files_are_unchanged(tmp_path):
    code, stdout = run_generator(tmp_path / "cli", subprocess.PIPE)
    assert code == 0
    assert "\r" not in stdout
    progress = [line for line in stdout.splitlines() if line.startswith("writing ")]
    assert progress[-1].startswith("writing verification: 12/12 images (")
    assert any(line.startswith("writing train: 12/12 images (") for line in progress)
    # The same sets written in this process, one worker and nobody listening: the same bytes.
    ensure_quickstart_data(str(tmp_path / "quiet"), num_classes=3, images_per_class=4, num_pairs=6)
    assert written_files(tmp_path / "cli") == written_files(tmp_path / "quiet")


def test_in_a_terminal_progress_is_a_bar(tmp_path):
    controller, terminal = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, where tqdm draws nothing; give it a real terminal's size.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        code, stdout = run_generator(tmp_path / "tty", terminal)
    finally:
        os.close(terminal)
    shown = b""
    try:
        while chunk := os.read(controller, 65536):
            shown += chunk
    except OSError:  # Linux ends a pseudo-terminal whose other side is closed with EIO
        pass
    os.close(controller)
    assert code == 0
    assert b"\r" in shown and b"12/12" in shown
    assert not any(line.startswith("writing ") for line in stdout.splitlines())


def test_every_format_reports_up_to_its_total(tmp_path, capsys):
    messages = []
    ensure_quickstart_data(str(tmp_path / "q"), num_classes=2, images_per_class=3, num_pairs=4,
                           formats=["rec", "bin"], log=messages.append)
    ensure_fairness_data(str(tmp_path / "f"), groups=("group_a", "group_d"), num_pairs=4, pair_identities=4,
                         folder_identities=2, images_per_identity=2, log=messages.append)
    last_count = {}
    for message in messages:
        if message.startswith("writing "):  # "writing <set>: <done>/<total> images (<rate> images/s)"
            name, count = message.split(" (")[0].split(": ")
            last_count[name] = count
    assert last_count == {"writing train_rec": "6/6 images", "writing bin": "24/24 images",
                          "writing group_pairs": "16/16 images", "writing group_folder": "8/8 images"}
    assert "\r" not in capsys.readouterr().err
