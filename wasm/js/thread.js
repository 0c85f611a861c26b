// A kernel thread of the threaded wasm build (binllm_wasm_relaxed_threads.wasm): js/engine.js
// starts one Web Worker per extra thread and sends it the compiled module, the shared memory,
// and a stack and a thread-local block it allocated in that memory. The worker instantiates
// the module on the same memory, moves its stack pointer to its own stack, initializes its
// thread-local block, and joins the kernels' pool (binllm_thread_main) until the pool is
// replaced. It never touches the DOM or the model: the engine's worker drives everything.
self.onmessage = ({ data: { module, memory, stackTop, tls } }) => {
  try {
    const instance = new WebAssembly.Instance(module, {
      env: { memory },
      binllm_host: { read_file: () => -1 }, // only the engine's thread reads files
    });
    const e = instance.exports;
    e.__stack_pointer.value = stackTop;
    e.__wasm_init_tls(tls);
    self.postMessage({ type: "started" });
    e.binllm_thread_main();
    self.postMessage({ type: "ended" });
  } catch (err) {
    self.postMessage({ type: "error", message: String(err) });
  }
  self.close();
};
