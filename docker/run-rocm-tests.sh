#!/usr/bin/env bash
# Run atom-tier's ROCm-marked tests (`pytest -m rocm`) inside the ROCm image, on an AMD GPU host.
#
#   docker/run-rocm-tests.sh [--build] [--base-image IMAGE] [--image NAME] [--results DIR]
#                            [--model-dir DIR] [-- PYTEST_ARGS...]
#
#   --build           build docker/Dockerfile.rocm first (tagged NAME)
#   --base-image      BASE_IMAGE build argument (a vLLM 0.32.x ROCm image)
#   --image           image to run (default atom-tier:rocm)
#   --results         host folder for junit.xml, server logs and replay results
#                     (default out/rocm-tests)
#   --model-dir       a local model directory to test instead of the generated small model
#                     (mounted read-only; the tests need no network either way)
#
# HIP_VISIBLE_DEVICES is passed through when set (the TP=2 test needs two GPUs).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="atom-tier:rocm"
base_image=""
build=0
results="${repo_root}/out/rocm-tests"
model_dir=""
pytest_args=()

while (($#)); do
    case "$1" in
        --build) build=1 ;;
        --base-image) base_image="$2"; shift ;;
        --image) image="$2"; shift ;;
        --results) results="$2"; shift ;;
        --model-dir) model_dir="$(cd "$2" && pwd)"; shift ;;
        --) shift; pytest_args=("$@"); break ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "run-rocm-tests.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# Without the ROCm kernel driver the container could not see a GPU and every test would skip.
if [[ ! -e /dev/kfd ]]; then
    echo "run-rocm-tests.sh: /dev/kfd is missing: run this on a host with AMD GPUs and ROCm" >&2
    exit 2
fi

if ((build)); then
    build_args=()
    [[ -n "${base_image}" ]] && build_args+=(--build-arg "BASE_IMAGE=${base_image}")
    docker build -f "${repo_root}/docker/Dockerfile.rocm" -t "${image}" \
        "${build_args[@]}" "${repo_root}"
fi

mkdir -p "${results}"
run_args=(-v "${results}:/results" -e ROCM_TEST_RESULTS=/results)
if [[ -n "${model_dir}" ]]; then
    run_args+=(-v "${model_dir}:/models/test:ro" -e ROCM_TEST_MODEL=/models/test)
fi

# GPU access: /dev/kfd (compute) and /dev/dri (the GPUs' render nodes), group video.
# --ipc host: vLLM's workers and atom-tier's DRAM tier share memory through /dev/shm, which
# then is the host's; --shm-size sizes a private /dev/shm where a runtime refuses host IPC.
# seccomp/ptrace: what AMD's own ROCm container instructions grant (rocprof, core dumps).
docker run --rm \
    --device /dev/kfd --device /dev/dri --group-add video \
    --ipc host --shm-size 16g \
    --security-opt seccomp=unconfined --cap-add SYS_PTRACE \
    -e HIP_VISIBLE_DEVICES \
    "${run_args[@]}" \
    -w /opt/atom-tier \
    --entrypoint python3 \
    "${image}" \
    -m pytest -m rocm tests -p no:cacheprovider -rA --junitxml /results/junit.xml \
    "${pytest_args[@]}"
