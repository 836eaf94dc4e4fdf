"""export/training_memory.py: a training that will not fit in memory is said before the long work."""

import pytest

from export import training_memory
from export.training_memory import GIB, available_bytes, memory_note, peak_bytes

LITE0_CHANNELS = 152


@pytest.fixture
def meminfo(tmp_path, monkeypatch):
    """Writes a /proc/meminfo of its own, with the MemAvailable given (kB; None: without the line)."""
    path = tmp_path / "meminfo"
    monkeypatch.setattr(training_memory, "MEMINFO", path)

    def write(available_kb: int | None) -> None:
        line = f"MemAvailable:   {available_kb} kB\n" if available_kb is not None else ""
        path.write_text(f"MemTotal:       16314908 kB\nMemFree:          331212 kB\n{line}Buffers: 2 kB\n")

    return write


def test_the_available_memory_is_linux_memavailable_or_unknown(meminfo, tmp_path, monkeypatch):
    meminfo(12_000_000)
    assert available_bytes() == 12_000_000 * 1024
    meminfo(None)  # a kernel before 3.14 does not say: nothing is said
    assert available_bytes() is None and memory_note(10**6, 256, 256, LITE0_CHANNELS) is None
    monkeypatch.setattr(training_memory, "MEMINFO", tmp_path / "none")  # not Linux
    assert available_bytes() is None


def test_a_training_past_the_available_memory_is_said_with_what_fits(meminfo):
    """ELPV's 1,131 cells at 256 px peaked at 4.28 GB (measured): 16 GiB take about 5,000 pictures,
    and 20,000 were ended by the out-of-memory killer without a word."""
    assert abs(peak_bytes(1131, 256, 256, LITE0_CHANNELS) / 10**9 - 4.28) < 0.25
    meminfo(16 * 2**20)  # 16 GiB available
    assert memory_note(5000, 256, 256, LITE0_CHANNELS) is None
    note = memory_note(20000, 256, 256, LITE0_CHANNELS)
    fits = int(note.split("About ")[1].split()[0].replace(",", ""))
    assert peak_bytes(fits, 256, 256, LITE0_CHANNELS) <= 16 * GIB < peak_bytes(fits + 1, 256, 256, LITE0_CHANNELS)
    assert note == (f"training on 20,000 pictures at 256x256 px takes about "
                    f"{peak_bytes(20000, 256, 256, LITE0_CHANNELS) / GIB:.1f} GiB of memory, and this computer has "
                    f"16.0 GiB available: the system may end it without a word (\"Killed\"). About {fits:,} pictures "
                    "fit; train on fewer (a quoted wildcard of some of them), or with a smaller --input-size, or on a "
                    "computer with more memory")
    assert memory_note(20000, 128, 128, LITE0_CHANNELS) is None  # a quarter of the features a picture


def test_train_says_it_before_reading_the_pictures(mvtec_category, meminfo, tmp_path, capsys):
    from conftest import TINY_INPUT, TINY_PROTOTYPES
    from export.train import TrainConfig, train

    meminfo(1024)  # 1 MiB: nothing fits, and training goes on (swap may hold it)
    run = train(TrainConfig(data=str(mvtec_category), input_size=TINY_INPUT, prototypes=TINY_PROTOTYPES),
                tmp_path / "run")
    said = capsys.readouterr().out
    assert f"warning: training on 12 pictures at {TINY_INPUT}x{TINY_INPUT} px takes about" in said
    assert said.index("warning: training on 12") < said.index("training on cpu") and (run / "config.yaml").exists()
