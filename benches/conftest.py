"""Prints bench_kernels.py's results as kernel_table.py's markdown table after a run."""

import kernel_cases as kc


def pytest_terminal_summary(terminalreporter):
    rows, mem = kc.rows_from_results(kc.RESULTS)
    if not rows:
        return
    terminalreporter.section("binllm kernels: GB/s, shares of memory bandwidth, speed-ups (this run)")
    if mem:
        terminalreporter.write_line(
            "memory read bandwidth (1 GiB): " + ", ".join(f"{gbs:.1f} GB/s on {t} thread(s)" for t, gbs in sorted(mem.items()))
        )
    terminalreporter.write_line(kc.markdown_table(rows, mem))
