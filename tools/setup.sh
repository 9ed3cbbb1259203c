#!/usr/bin/env bash
# One-command set-up: the Fashion-MNIST data package (Debian), Debian's chromium (the tests open
# report.html in it, headless) and edgeprune with its Python deps.
# Safe to re-run. Needs root (or sudo) for apt-get; skips apt when the data files and chromium are
# already there.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=/usr/share/datasets/fashion-mnist
packages=()
[ -f "$data_dir/train-images-idx3-ubyte.gz" ] || packages+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if [ "${#packages[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${packages[@]}"
  else
    case " ${packages[*]} " in *" dataset-fashion-mnist "*)
      echo "setup: no apt-get here; put the four Fashion-MNIST IDX files in a folder and set EDGEPRUNE_DATA to it" >&2 ;;
    esac
    case " ${packages[*]} " in *" chromium "*)
      echo "setup: no apt-get here; without chromium the browser tests of report.html are skipped" >&2 ;;
    esac
  fi
fi

# PIP_FIND_LINKS is emptied so that a local CPU-only torch wheel without a matching torchvision
# is never picked over PyPI's build.
PIP_FIND_LINKS= python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "setup: done ($(python3 -c 'import edgeprune; print("edgeprune", edgeprune.__version__)'))"
