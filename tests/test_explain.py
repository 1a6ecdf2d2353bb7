"""`oomdoctor explain` reads the OOM message a user pastes (or the log they point at), gives its
numbers, says whether it is a memory problem at all, the likely cause, and the next command to run.

The messages below are real: PyTorch's own output as users reported it, one per format
(c10/cuda/CUDACachingAllocator.cpp: <= 2.0, 2.1 with its "capacty" typo, >= 2.2), or produced here
by PyTorch itself (CPU allocator, oomdoctor's simulated capacity).
"""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oomdoctor
from conftest import run_cli
from oomdoctor.cli import main
from oomdoctor.gpu.explain import explain, find_messages, parse

KiB, MiB, GiB = 1024, 1024**2, 1024**3

V22 = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total capacity of "
       "23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has 23.60 GiB memory in use. "
       "Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB is reserved by PyTorch but "
       "unallocated. If reserved but unallocated memory is large try setting "
       "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
       "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
V21 = ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.70 GiB. GPU 0 has a total capacty of "
       "6.00 GiB of which 0 bytes is free. Of the allocated memory 2.93 GiB is allocated by PyTorch, and 2.30 GiB is "
       "reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
       "max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
       "PYTORCH_CUDA_ALLOC_CONF")
V20 = ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 1.96 GiB total capacity; 1.24 GiB "
       "already allocated; 2.88 MiB free; 1.25 GiB reserved in total by PyTorch)")
V14 = ("RuntimeError: CUDA out of memory. Tried to allocate 12.50 MiB (GPU 0; 10.92 GiB total capacity; 8.57 MiB "
       "already allocated; 9.28 GiB free; 4.68 MiB cached)")
OTHER_PROCESS_V20 = ("CUDA out of memory. Tried to allocate 2.26 GiB (GPU 0; 6.00 GiB total capacity; 781.59 MiB "
                     "already allocated; 3.03 GiB free; 1.24 GiB reserved in total by PyTorch)")
TOO_LARGE_WITH_PROCESSES = (
    "CUDA out of memory. Tried to allocate 128.00 GiB. GPU 0 has a total capacty of 23.65 GiB of which 7.95 GiB is "
    "free. Process 1957120 has 7.10 GiB memory in use. Including non-PyTorch memory, this process has 8.58 GiB "
    "memory in use. Of the allocated memory 8.13 GiB is allocated by PyTorch, and 8.94 MiB is reserved by PyTorch "
    "but unallocated. If reserved but unallocated memory is large try setting max_split_size_mb to avoid "
    "fragmentation.  See documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF")
HIP_CAPPED = (
    "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 2.00 MiB. GPU 0 has a total capacity of 287.98 GiB "
    "of which 275.86 GiB is free. 1.05 GiB allowed; Of the allocated memory 1017.01 MiB is allocated by PyTorch, "
    "with 17.00 MiB allocated in private pools (e.g., HIP Graphs), and 54.99 MiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
    "See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
# Recorded by tests/gpu on an H100 with PyTorch 2.11, capped at 1025 MiB with 1010 MiB live, asking for 5 MiB
H100_CAPPED = (
    "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 77.68 GiB is "
    "free. Including non-PyTorch memory, this process has 1.49 GiB memory in use. 1.00 GiB allowed; Of the allocated "
    "memory 1010.00 MiB is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    "  See documentation for Memory Management  "
    "(https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)")
# As printed in pytorch/pytorch#99699, wrapped over several lines
WRAPPED = """torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 138.00 MiB.
GPU 0 has a total capacty of 15.90 GiB of which 8.44 MiB is free.
Process 1246069 has 577.00 MiB memory in use. Including non-PyTorch memory,
this process has 15.32 GiB memory in use. Of the allocated memory
14.12 GiB is allocated by PyTorch, and 410.41 MiB is reserved
by PyTorch but unallocated."""
MPS = ("RuntimeError: MPS backend out of memory (MPS allocated: 7.80 GiB, other allocations: 6.94 GiB, max allowed: "
       "18.13 GiB). Tried to allocate 3.46 GiB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable "
       "upper limit for memory allocations (may cause system failure).")
DEVICE_ASSERT = """RuntimeError: CUDA error: device-side assert triggered
CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
For debugging consider passing CUDA_LAUNCH_BLOCKING=1."""
CUBLAS = "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
CUDNN_INIT = "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_INITIALIZED"
CUDNN_UNSUPPORTED = ("RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in "
                     "a non-contiguous input.")


def real_cpu_oom() -> str:
    try:
        torch.empty(2**60, dtype=torch.uint8)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError("allocating 1 EiB succeeded")


def real_simulated_oom() -> str:
    try:
        with oomdoctor.track(capacity="1MiB", device="cpu", quiet=True):  # CPU even where CUDA is present
            keep = torch.ones(100_000)  # noqa: F841  (live while the next one is asked for)
            torch.ones(300_000)
    except torch.OutOfMemoryError as exc:
        return str(exc)
    raise AssertionError("the simulated capacity did not raise")


def approx(n: float, unit: int) -> tuple[float, float]:
    return n * unit - 0.006 * unit, n * unit + 0.006 * unit  # messages print two decimals


def between(value: int | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


# -- the three PyTorch formats and their numbers ---------------------------------------------------
def test_pytorch_2_2_format():
    m = parse(V22)
    assert (m.kind, m.format, m.backend, m.device) == ("allocator-oom", "torch>=2.2", "cuda", "0")
    assert m.requested == 22 * MiB
    assert between(m.total, approx(23.65, GiB)) and between(m.free, approx(11.06, MiB))
    assert between(m.allocated, approx(22.90, GiB)) and between(m.reserved_unallocated, approx(194.87, MiB))
    assert between(m.this_process, approx(23.60, GiB))
    # what the user cannot see in the message: outside PyTorch = total - free - reserved
    assert m.outside_pytorch == m.total - m.free - m.allocated - m.reserved_unallocated
    e = explain(m)
    # 195 MiB cached in pieces is more than the 22 MiB asked for, but the device is 97% allocated
    assert e.cause == "size"
    assert any("Fragmentation plays a small part" in line for line in e.lines)


def test_pytorch_2_1_format_with_its_typo_and_a_fragmentation_cause():
    m = parse(V21)
    assert m.format == "torch-2.1" and m.free == 0
    e = explain(m)
    # 2.30 GiB reserved but unallocated, more than the 1.70 GiB asked for: fragmentation
    assert e.cause == "fragmentation"
    assert e.next[0] == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python train.py"


@pytest.mark.parametrize("text", [V20, V14])
def test_pytorch_2_0_and_older_formats(text):
    m = parse(text)
    assert m.format == "torch<=2.0" and m.requested in (20 * MiB, int(12.5 * MiB))
    assert m.reserved_unallocated is not None and m.reserved_unallocated >= 0


def test_old_format_suggests_max_split_size_for_fragmentation():
    text = ("OutOfMemoryError: CUDA out of memory. Tried to allocate 192.00 MiB (GPU 0; 4.00 GiB total capacity; "
            "3.08 GiB already allocated; 0 bytes free; 3.47 GiB reserved in total by PyTorch) If reserved memory "
            "is >> allocated memory try setting max_split_size_mb to avoid fragmentation.")
    e = explain(parse(text))
    assert e.cause == "fragmentation"
    assert e.next[0].startswith("PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:")  # expandable segments came in 2.1


def test_tried_to_allocate_is_explained_as_the_segment_size():
    assert any("segment" in line for line in explain(parse(V22)).lines)


# -- causes --------------------------------------------------------------------------------------
def test_a_request_larger_than_the_device_is_too_large_and_names_other_processes():
    m = parse(TOO_LARGE_WITH_PROCESSES)
    assert m.processes == [{"pid": 1957120, "bytes": int(7.10 * GiB)}]
    assert between(m.this_process, approx(8.58, GiB))
    assert explain(m).cause == "too-large"


def test_memory_held_outside_pytorch_points_at_other_processes():
    e = explain(parse(OTHER_PROCESS_V20))
    assert e.cause == "other-process"
    assert e.next[0] == "oomdoctor gpus"


def test_a_per_process_cap_is_the_cause_when_reached():
    m = parse(HIP_CAPPED)
    assert m.backend == "hip" and between(m.allowed, approx(1.05, GiB)) and m.private_pools == 17 * MiB
    assert explain(m).cause == "memory-limit"


def test_a_5_mib_request_asks_for_a_20_mib_segment_and_hits_the_cap():
    m = parse(H100_CAPPED)
    assert (m.requested, m.allocated, m.reserved_unallocated) == (20 * MiB, 1010 * MiB, 0)
    assert m.allowed == 1 * GiB and between(m.this_process, approx(1.49, GiB))
    assert explain(m).cause == "memory-limit"


def test_a_message_wrapped_over_lines_is_read_whole():
    m = parse(WRAPPED)
    assert m.requested == 138 * MiB and m.processes == [{"pid": 1246069, "bytes": 577 * MiB}]
    assert between(m.reserved_unallocated, approx(410.41, MiB))


# -- other allocators and oomdoctor's own ----------------------------------------------------------
def test_simulated_capacity_message_from_oomdoctor():
    m = parse(real_simulated_oom())
    assert (m.kind, m.format, m.backend, m.device) == ("simulated-oom", "oomdoctor", "cpu", "cpu")
    assert m.total == 1 * MiB and m.reserved_unallocated == 0
    e = explain(m)
    assert e.next[0].startswith("oomdoctor batch --flag --batch-size --capacity 1.00MiB")


def test_cpu_allocator_message_from_pytorch():
    m = parse(real_cpu_oom())
    assert (m.kind, m.requested) == ("cpu-oom", 2**60)
    assert explain(m).cause == "too-large"  # an exabyte is a shape bug, not a small machine


def test_mps_message():
    m = parse(MPS)
    assert (m.kind, m.requested) == ("mps-oom", int(Decimal("3.46") * GiB))
    assert between(m.other_allocations, approx(6.94, GiB)) and between(m.allowed, approx(18.13, GiB))
    assert any("PYTORCH_MPS_HIGH_WATERMARK_RATIO" in line for line in explain(m).lines)


@pytest.mark.parametrize("text,memory,first_command", [
    (DEVICE_ASSERT, "no", "CUDA_LAUNCH_BLOCKING=1 python train.py"),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", "no",
     "CUDA_LAUNCH_BLOCKING=1 python train.py"),
    (CUBLAS, "yes", "oomdoctor gpus"),
    (CUDNN_INIT, "maybe", "oomdoctor gpus"),
    (CUDNN_UNSUPPORTED, "maybe", "oomdoctor batch --flag --batch-size train.py"),
    ("RuntimeError: CUDA error: out of memory", "yes", "oomdoctor gpus"),
])
def test_cuda_errors_taken_for_memory_trouble_say_whether_they_are(text, memory, first_command):
    e = explain(parse(text))
    assert (e.memory, e.next[0]) == (memory, first_command)


def test_other_out_of_memory_lines_are_recognized_without_numbers():
    m = parse("RuntimeError: XPU out of memory. Tried to allocate 2.00 GiB")
    assert (m.kind, m.backend, m.requested) == ("oom", "xpu", 2 * GiB)


def test_unknown_text_is_no_message():
    assert parse("ValueError: expected 3 channels, got 4") is None
    assert find_messages("") == []


# -- logs ------------------------------------------------------------------------------------------
LOG = f"""epoch 1 loss 0.31
Traceback (most recent call last):
  File "/home/me/project/train.py", line 88, in <module>
    main()
  File "/home/me/project/train.py", line 57, in main
    loss = model(batch).sum()
  File "/usr/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1511, in _call_impl
    return forward_call(*args, **kwargs)
{V21}
retrying with a smaller batch
Traceback (most recent call last):
  File "/home/me/project/train.py", line 88, in <module>
    main()
  File "/home/me/project/train.py", line 61, in main
    loss.backward()
  File "/usr/lib/python3.11/site-packages/torch/_tensor.py", line 522, in backward
    torch.autograd.backward(
{V22}
"""


def test_a_log_gives_every_message_and_the_last_ones_failing_line():
    messages = find_messages(LOG)
    assert [m.format for m in messages] == ["torch-2.1", "torch>=2.2"]
    last = messages[-1]
    assert last.location == {"file": "/home/me/project/train.py", "line": 61, "function": "main"}
    assert last.script == "/home/me/project/train.py"
    assert last.line == LOG.splitlines().index(V22) + 1
    assert explain(last).next[0] == "oomdoctor run --json report.json /home/me/project/train.py"


def test_cli_explains_the_last_message_of_a_log(tmp_path, capsys):
    (tmp_path / "train.log").write_text(LOG)
    with pytest.raises(SystemExit) as done:
        main(["explain", "--file", str(tmp_path / "train.log")])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "2 messages found; explaining the last, at line 18" in " ".join(out.split())
    assert "Likely cause: size" in out and "train.py:61 in main" in out
    assert "$ oomdoctor run --json report.json /home/me/project/train.py" in out


def test_cli_json_prints_the_parsed_fields(capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--json", V21])
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "oomdoctor.explain/1" and data["found"] == 1
    assert (data["cause"], data["memory"]) == ("fragmentation", "yes")
    message = data["message"]
    assert message["requested"] == int(1.70 * GiB) and message["free"] == 0
    assert message["reserved"] == message["allocated"] + message["reserved_unallocated"]


def test_cli_reads_the_message_from_stdin():
    result = run_cli("explain", "-", stdin=DEVICE_ASSERT)
    assert result.returncode == 0, result.stderr
    assert "NOT a memory problem" in result.stdout and "CUDA_LAUNCH_BLOCKING=1" in result.stdout


def test_suggested_batch_commands_are_ones_batch_accepts(tmp_path, capsys):
    # GIVEN every explanation that suggests `oomdoctor batch`, for a script that is not there
    texts = [V22, V21, real_simulated_oom(), MPS, CUDNN_INIT, CUDNN_UNSUPPORTED]
    commands = {c for t in texts for c in explain(parse(t)).next if c.startswith("oomdoctor batch")}
    assert commands
    for command in commands:
        # WHEN the command runs as suggested
        with pytest.raises(SystemExit) as done:
            main(command.split()[1:])
        # THEN batch took its options, and stopped only at what this machine lacks: the script, or a GPU
        error = capsys.readouterr().err
        assert done.value.code == 2, (command, error)
        assert "can't open file 'train.py'" in error or "no GPU here" in error, (command, error)


def test_a_long_log_gives_every_message_in_order():
    # GIVEN a log of thousands of messages of every kind, CUDA errors on lines of their own
    block = [V22, "RuntimeError: CUDA error: out of memory", "RuntimeError: XPU out of memory.", "step done"]
    text = "\n".join(block * 3000)
    # WHEN it is read
    messages = find_messages(text)
    # THEN each message is found once, on its line
    assert [m.kind for m in messages[:3]] == ["allocator-oom", "cuda-error", "oom"]
    assert len(messages) == 9000
    assert [m.line for m in messages[-3:]] == [11997, 11998, 11999]


# -- bad input: one line, exit code 2 --------------------------------------------------------------
def _one_line_error(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("oomdoctor: error: "), result.stderr
    return lines[0]


def test_unknown_text_says_so_in_one_line():
    assert "not an out-of-memory or CUDA error message" in _one_line_error(run_cli("explain", "the cat sat"))


def test_garbage_file_is_one_line_error(tmp_path):
    (tmp_path / "bad.log").write_bytes(b"\x00\xff\xfe garbage \x80\x81" * 50)
    line = _one_line_error(run_cli("explain", "--file", "bad.log", cwd=tmp_path))
    assert "no out-of-memory or CUDA error message found in bad.log" in line


def test_empty_or_missing_file_and_missing_input(tmp_path, capsys):
    (tmp_path / "empty.log").write_bytes(b"")
    for argv, words in ((["explain", "--file", str(tmp_path / "nope.log")], "no such file"),
                        (["explain", "--file", str(tmp_path / "empty.log")], "empty.log is empty"),
                        (["explain", "--file", str(tmp_path)], "not a file"),
                        (["explain"], "give either a MESSAGE or --file LOG"),
                        (["explain", "x", "--file", "y"], "give either a MESSAGE or --file LOG")):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
        assert words in capsys.readouterr().err


# -- the parser never raises -----------------------------------------------------------------------
_PIECES = [V22, V21, V20, HIP_CAPPED, MPS, DEVICE_ASSERT, CUBLAS, WRAPPED, "Traceback (most recent call last):\n",
           '  File "x.py", line 3, in f\n', "out of memory", "Tried to allocate 99999999999999999999999.9 TiB",
           "GPU 0 has a total capacity of", " 1.5 GB", "\n", "Process 12 has ", "0 bytes"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parser_never_raises_on_any_text(text):
    for m in find_messages(text):
        explain(m)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=20)), max_size=12), st.data())
def test_parser_never_raises_on_mangled_messages(pieces, data):
    text = "".join(pieces)
    if text:  # cut a real message anywhere
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut] + data.draw(st.text(max_size=5)) + text[cut:]
    for m in find_messages(text):
        explain(m)
        json.dumps(m.to_dict())
