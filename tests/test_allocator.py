"""The C allocator setting of the training commands: freed memory stays in the heap."""

import ctypes
import json
import subprocess
import sys
import types

import pytest

from perceiver_vl import cli
from perceiver_vl.allocator import COMMANDS, OPT_OUT_VARIABLE, keep_freed_memory

_libc = ctypes.CDLL(None)
glibc_only = pytest.mark.skipif(
    not hasattr(_libc, "gnu_get_libc_version"), reason="the setting applies to glibc only"
)

# In a fresh process: a "training step" that takes a 64 MiB block from malloc (as PyTorch's CPU
# allocator does for a tensor), writes all of it and frees it; the minor page faults of eight
# such steps after a first one. The kernel faults every page of the block in again each time
# glibc hands it back (unmapped when above the mmap threshold, trimmed off the heap top when
# the free space there exceeds the trim threshold); kept in the heap, it is reused as it is.
_PROBE = """
import ctypes, json, resource, sys
from perceiver_vl.allocator import keep_freed_memory
setting = keep_freed_memory({}) if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 2**20
def step():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": bool(setting and setting.applied), "faults": faults}))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_stay_in_the_process_for_the_next_step():
    default = _probe("system")
    assert default["faults"] > 0  # glibc's default gives the block back every step
    kept = _probe("keep")
    assert kept["applied"]
    # each of the eight steps would fault its 16,384 pages in again; kept, (almost) none do
    assert kept["faults"] * 4 < default["faults"]


@pytest.mark.parametrize(
    "environ, named",
    [
        ({OPT_OUT_VARIABLE: "system"}, OPT_OUT_VARIABLE),
        ({OPT_OUT_VARIABLE: " System "}, OPT_OUT_VARIABLE),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "jemalloc"),
    ],
)
def test_the_users_own_allocator_choice_is_left_alone(environ, named):
    setting = keep_freed_memory(environ)
    assert not setting.applied
    assert named in setting.reason


def test_an_unknown_choice_is_refused_with_the_variable_named():
    with pytest.raises(ValueError, match=f"{OPT_OUT_VARIABLE}='jemalloc'.*'system'"):
        keep_freed_memory({OPT_OUT_VARIABLE: "jemalloc"})


def test_training_and_encoding_commands_set_it_and_the_service_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    fake = types.ModuleType("fake_subcommand")
    fake.add_arguments = lambda parser: None
    fake.run = lambda args: 0
    monkeypatch.setitem(sys.modules, "fake_subcommand", fake)
    for command in ("demo", "index", "serve", "search"):
        monkeypatch.setitem(cli.SUBCOMMANDS, command, ("fake_subcommand", "test"))
    assert cli.main(["serve"]) == 0 and cli.main(["search"]) == 0
    assert calls == []
    assert cli.main(["demo"]) == 0 and cli.main(["index"]) == 0
    assert calls == [True, True]
    assert {"fit", "demo", "index", "evaluate"} <= COMMANDS and "serve" not in COMMANDS
