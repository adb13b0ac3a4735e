"""The bootstrap that turns a fresh interpreter, started as root inside new namespaces, into the
sandboxed program's process, before any of the program's code exists (standard library only;
prepended to the program's source by sandbox.command).

In order: build the program's whole world on a small tmpfs (the standard directories bound
read-only from /usr, the interpreter's own prefix bound read-only when it lives elsewhere, /proc of
the new PID namespace, four device nodes, a private size-capped /tmp holding the working folder)
and chroot into it; set the resource limits; drop every capability from the bounding set; switch
to the slot's uid and gid with no supplementary groups; forbid new privileges; ask for SIGKILL if
the parent dies; empty the environment. Nothing of the machine outside is visible afterwards:
not your home, not the store, not other users' files, whatever their permissions.

Why in-process and not `mount`/`chroot`/`prlimit`/`setpriv` commands: each is a fork+exec, and
some twenty of them took about 2.5 times as long per program as this one interpreter start.
"""

BOOTSTRAP = r'''
def _enter_sandbox(config):
    import ctypes, os, resource, signal
    libc = ctypes.CDLL(None, use_errno=True)
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096

    def mount(source, target, fstype, flags, data=""):
        if libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                      data.encode()) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, "mount %s on %s: %s" % (source, target, os.strerror(errno)))

    def bind_readonly(source, target):
        mount(source, target, "", MS_BIND)
        mount("", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    root = "/tmp"  # a mount point every machine has; the tmpfs hides the real one
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32", "usr"):
        host, inside = "/" + name, root + "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), inside)
        elif os.path.isdir(host):
            os.mkdir(inside)
            bind_readonly(host, inside)
    for prefix in config["prefixes"]:
        os.makedirs(root + prefix, mode=0o755, exist_ok=True)
        bind_readonly(prefix, root + prefix)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(root + "/dev")
    for device in ("null", "zero", "random", "urandom"):
        open(root + "/dev/" + device, "w").close()
        mount("/dev/" + device, root + "/dev/" + device, "", MS_BIND)
    os.mkdir(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          "size=%dm,mode=1777" % config["tmp_mb"])
    uid = config["uid"]
    os.mkdir(root + "/tmp/work", 0o700)
    os.chown(root + "/tmp/work", uid, uid)
    mount("", root, "", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/tmp/work")

    for limit, value in config["rlimits"].items():
        resource.setrlimit(getattr(resource, limit), tuple(value))
    PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 24, 38, 1
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from here on: no capabilities, no way back
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError("prctl failed")
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("the uid switch did not hold")
    channel = os.environ.get("LOOP_CHANNEL_FD", "")
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                       "HOME": "/tmp/work", "LOOP_CHANNEL_FD": channel})

_enter_sandbox(%(config)s)
del _enter_sandbox
'''
