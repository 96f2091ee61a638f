"""The guarded flash_attn import shim, exercised in fresh interpreters against a temporary site dir
that python/install.py fills (the package, flashsdpa_shim_guard.py and flashsdpa_shim.pth).

Where the interpreter has a user site dir, the temporary dir *is* the user site
(PYTHONUSERBASE), so the .pth hook runs at interpreter start exactly as after an install;
otherwise (a virtual environment) the child calls site.addsitedir on it first, which processes
.pth files the same way.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PYTHON_DIR

INSTALLER = os.path.join(PYTHON_DIR, "install.py")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLASHSDPA_SHIM", "PYTHONUSERBASE")}
    env.update(extra)
    return env


class SiteDir:
    """A temporary site dir the child interpreter processes at start-up."""

    def __init__(self, root):
        self.root = str(root)
        env = _clean_env(PYTHONUSERBASE=self.root)
        probe = subprocess.run([sys.executable, "-c", "import site; print(site.ENABLE_USER_SITE); "
                                "print(site.getusersitepackages())"], env=env, capture_output=True, text=True,
                               check=True)
        enabled, user_site = probe.stdout.split("\n")[:2]
        self.user_site = enabled == "True"
        self.path = user_site if self.user_site else os.path.join(self.root, "site-packages")

    def install(self, *args):
        subprocess.run([sys.executable, INSTALLER, "--target", self.path, *args], check=True, capture_output=True)

    def run(self, code, **env):
        prelude = "" if self.user_site else f"import site; site.addsitedir({self.path!r})\n"
        child_env = _clean_env(**env)
        if self.user_site:
            child_env["PYTHONUSERBASE"] = self.root
        return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=child_env,
                              capture_output=True, text=True, timeout=300)


@pytest.fixture
def site_dir(tmp_path):
    site = SiteDir(tmp_path / "userbase")
    site.install()
    return site


SERVED = """
    import sys
    assert "torch" not in sys.modules, "the start-up hook imported torch"
    import flash_attn
    assert getattr(flash_attn, "__flashsdpa_shim__", False), flash_attn.__file__
    from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
    from flash_attn import flash_attn_qkvpacked_func, flash_attn_kvpacked_func
    from flash_attn import flash_attn_varlen_qkvpacked_func, flash_attn_varlen_kvpacked_func
    from flash_attn.flash_attn_interface import flash_attn_func as interface_func
    from flash_attn.bert_padding import pad_input, unpad_input
    from flash_attn.layers.rotary import apply_rotary_emb
    import torch, flashsdpa
    assert interface_func is flashsdpa.flash_attn_func
    q = torch.randn(1, 6, 2, 16)
    out = flash_attn_func(q, q, q, causal=True)
    assert torch.equal(out, flashsdpa.flash_attn_func(q, q, q, causal=True))
    print("SERVED", flash_attn.__version__)
"""


def test_shim_serves_flash_attn(site_dir):
    result = site_dir.run(SERVED)
    assert result.returncode == 0, result.stderr
    assert "SERVED 2.8.3+flashsdpa" in result.stdout


def test_shim_off(site_dir):
    for value in ("off", "0", "false"):
        result = site_dir.run("import flash_attn", FLASHSDPA_SHIM=value)
        assert result.returncode != 0 and "No module named 'flash_attn'" in result.stderr, (value, result.stderr)


def test_real_flash_attn_on_sys_path_wins(site_dir, tmp_path):
    real = tmp_path / "real"
    (real / "flash_attn").mkdir(parents=True)
    (real / "flash_attn" / "__init__.py").write_text("REAL = True\n")
    (real / "flash_attn" / "bert_padding.py").write_text("REAL = True\n")
    result = site_dir.run("""
        import flash_attn, flash_attn.bert_padding
        assert flash_attn.REAL and flash_attn.bert_padding.REAL
        assert not hasattr(flash_attn, "__flashsdpa_shim__")
        print("REAL")
    """, PYTHONPATH=str(real))
    assert result.returncode == 0, result.stderr
    assert "REAL" in result.stdout


def test_real_flash_attn_installed_beside_wins(site_dir):
    package = os.path.join(site_dir.path, "flash_attn")
    os.makedirs(package)
    with open(os.path.join(package, "__init__.py"), "w") as f:
        f.write("REAL = True\n")
    result = site_dir.run("import flash_attn; assert flash_attn.REAL; print('REAL')")
    assert result.returncode == 0, result.stderr


def test_develop_install_and_uninstall(tmp_path):
    site = SiteDir(tmp_path / "userbase")
    site.install("--develop")
    assert os.listdir(site.path) == ["flashsdpa_shim.pth"]
    result = site.run(SERVED)
    assert result.returncode == 0, result.stderr
    site.install("--uninstall")
    assert os.listdir(site.path) == []
    result = site.run("import flash_attn")
    assert result.returncode != 0


def test_shim_can_be_switched_off_before_the_first_import(site_dir):
    result = site_dir.run("""
        import os
        os.environ["FLASHSDPA_SHIM"] = "off"
        try:
            import flash_attn
        except ModuleNotFoundError:
            print("OFF")
    """)
    assert result.returncode == 0 and "OFF" in result.stdout, result.stderr
