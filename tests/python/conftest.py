"""Shared fixtures of the Python tests.

Device: ``--device cpu`` (default) or ``--device cuda``, or FLASHSDPA_TEST_DEVICE. On CUDA, a call
that no CUDA tier serves yet raises NotImplementedError; such tests are reported as skipped with
the library's message unless FLASHSDPA_TEST_STRICT=1 makes them fail.
"""

import os
import sys

import pytest
import torch

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(TESTS_DIR))
PYTHON_DIR = os.path.join(REPO_ROOT, "python")
for path in (TESTS_DIR, PYTHON_DIR):
    if path not in sys.path:
        sys.path.insert(0, path)

TORCH_VERSION = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


def pytest_addoption(parser):
    parser.addoption("--device", default=os.environ.get("FLASHSDPA_TEST_DEVICE", "cpu"), choices=("cpu", "cuda"),
                     help="where the tensors of the kernel tests live")


def pytest_configure(config):
    config.addinivalue_line("markers", "torch2: needs torch >= 2 (skipped on older torch)")


@pytest.fixture(scope="session")
def device(request):
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: torch sees no CUDA device")
    return torch.device(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not report.failed or call.excinfo is None:
        return
    if os.environ.get("FLASHSDPA_TEST_STRICT") == "1" or item.config.getoption("--device") != "cuda":
        return
    error = call.excinfo.value
    if isinstance(error, NotImplementedError) and "cuda" in str(error).lower():
        report.outcome = "skipped"
        report.longrepr = (str(item.fspath), item.location[1] or 0, f"not served on CUDA yet: {error}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
