"""Installs the flashsdpa Python package and its flash_attn import shim into a site-packages dir.

    scripts/build_torch_ext.sh                       # build the extension first
    /usr/bin/python3 python/install.py               # into this interpreter's site-packages
    /usr/bin/python3 python/install.py --user        # into the user site-packages
    /usr/bin/python3 python/install.py --target DIR  # into DIR (a site dir: .pth files run there)
    /usr/bin/python3 python/install.py --develop     # point at this checkout instead of copying
    /usr/bin/python3 python/install.py --uninstall   # remove what any of the above put there

Installed are the package (flashsdpa/, with the built _flashsdpa_ops.so), the guard module
flashsdpa_shim_guard.py and flashsdpa_shim.pth, which activates the shim at interpreter start.
Set FLASHSDPA_SHIM=off to disable the shim without uninstalling.
"""

import argparse
import os
import shutil
import site
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "flashsdpa"
GUARD = "flashsdpa_shim_guard.py"
PTH = "flashsdpa_shim.pth"
LIBRARY = "_flashsdpa_ops.so"


def _default_target(user):
    return site.getusersitepackages() if user else sysconfig.get_paths()["purelib"]


def uninstall(target):
    removed = []
    for name in (PACKAGE, GUARD, PTH):
        path = os.path.join(target, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


def install(target, develop):
    if not os.path.isfile(os.path.join(HERE, PACKAGE, LIBRARY)):
        raise SystemExit(f"install: {os.path.join(HERE, PACKAGE, LIBRARY)} is missing; "
                         "run scripts/build_torch_ext.sh first")
    os.makedirs(target, exist_ok=True)
    uninstall(target)
    if develop:
        # One .pth: its path line puts this checkout on sys.path before its import line runs.
        with open(os.path.join(target, PTH), "w") as f:
            f.write(HERE + "\n")
            f.write("import flashsdpa_shim_guard\n")
        return
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp")
    shutil.copytree(os.path.join(HERE, PACKAGE), os.path.join(target, PACKAGE), ignore=ignore)
    shutil.copy2(os.path.join(HERE, GUARD), os.path.join(target, GUARD))
    shutil.copy2(os.path.join(HERE, PTH), os.path.join(target, PTH))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", help="a site-packages directory (default: this interpreter's)")
    where.add_argument("--user", action="store_true", help="the user site-packages directory")
    parser.add_argument("--develop", action="store_true", help="reference this checkout instead of copying")
    parser.add_argument("--uninstall", action="store_true", help="remove an installation")
    args = parser.parse_args(argv)
    target = os.path.abspath(args.target or _default_target(args.user))
    if args.uninstall:
        removed = uninstall(target)
        print("removed " + (", ".join(removed) if removed else f"nothing (no flashsdpa in {target})"))
        return 0
    install(target, args.develop)
    mode = "linked to " + HERE if args.develop else "copied"
    print(f"installed flashsdpa into {target} ({mode}); the flash_attn shim is active in new interpreters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
