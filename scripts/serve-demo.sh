#!/usr/bin/env bash
# Serves the browser demo (wasm/www) on localhost with a model beside the page:
#
#   scripts/serve-demo.sh [MODEL] [--port N]     then open http://localhost:8000/www/
#
# MODEL is a .gguf file or a Hugging Face model folder (default: binllm's embedded ternary
# model). The page loads it as www/model.gguf or www/model/; ?model=URL loads another. Builds the wasm module first if it is
# missing. The served folder (target/wasm-demo) links wasm/js, wasm/pkg and wasm/www, so edits
# show on reload.
set -euo pipefail
cd "$(dirname "$0")/.."

port=8000
model=""
while (($#)); do
    case "$1" in
        --port) port=$2; shift 2 ;;
        -h|--help) sed -n 2,9p "$0"; exit 0 ;;
        *) model=$1; shift ;;
    esac
done
if [[ -z $model ]]; then
    model=$(.venv/bin/python -c "from binllm.model import default_model_path; print(default_model_path())" 2>/dev/null || true)
fi
if [[ -z $model || ! -e $model ]]; then
    echo "serve-demo: no model (pass a .gguf file or a model folder)" >&2
    exit 1
fi
[[ -s wasm/pkg/binllm_wasm.wasm ]] || bash scripts/build-wasm.sh

root=target/wasm-demo
rm -rf "$root"
mkdir -p "$root/www"
ln -s "$PWD/wasm/js" "$root/js"
ln -s "$PWD/wasm/pkg" "$root/pkg"
for f in wasm/www/*; do ln -s "$PWD/$f" "$root/www/"; done
if [[ -d $model ]]; then
    ln -s "$(realpath "$model")" "$root/www/model"
    url="http://localhost:$port/www/?model=model/"
else
    ln -s "$(realpath "$model")" "$root/www/model.gguf"
    url="http://localhost:$port/www/"
fi
echo "serve-demo: $url  (model: $model)"
# COOP/COEP make the page cross-origin isolated: SharedArrayBuffer, so the threaded module runs
# (without them BinLLM.load falls back to one thread).
exec python3 - "$port" "$root" <<'PY'
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

port, root = int(sys.argv[1]), sys.argv[2]
http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=root)).serve_forever()
PY
