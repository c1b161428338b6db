"""The deployment files of deploy/ against the server they deploy: usage: test_deploy_files.py MOEFLOW SRC.

serve.conf passes `moeflow serve --check-config` (every key is an option, every value in range); the
systemd unit runs serve on /etc/moeflow/serve.conf, stops it by SIGTERM with time for serve.conf's
drain, restarts it after a failure but not after a bad config (exit 2), raises RLIMIT_MEMLOCK for
io_uring's registered buffers, keeps the GPU's device nodes and io_uring reachable, runs as the user
of the sysusers.d entry, and passes `systemd-analyze verify` (where systemd-analyze is installed)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("FAIL: " + msg, file=sys.stderr)


def conf_items(text):
    """serve.conf's key = value pairs (comments, quotes and blank lines as serve reads them)."""
    items = {}
    for line in text.splitlines():
        line = re.sub(r'#.*', '', line).strip()
        if line:
            k, v = (s.strip() for s in line.split('=', 1))
            items[k.replace('_', '-')] = v.strip('"')
    return items


def unit_items(text):
    """A systemd unit's settings: {(section, key): [values]}."""
    items, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('['):
            section = line.strip('[]')
            continue
        k, v = (s.strip() for s in line.split('=', 1))
        items.setdefault((section, k), []).append(v)
    return items


def check_config(moeflow, path):
    r = subprocess.run([moeflow, 'serve', '--config', path, '--check-config'], capture_output=True, text=True,
                       timeout=60)
    check(r.returncode == 0 and r.stdout == 'moeflow serve: configuration ok\n',
          f'{path}: --check-config exit {r.returncode}: {r.stdout}{r.stderr}')


def main():
    moeflow, src = os.path.abspath(sys.argv[1]), sys.argv[2]
    deploy = os.path.join(src, 'deploy')
    conf_path = os.path.join(deploy, 'serve.conf')
    check_config(moeflow, conf_path)
    conf = conf_items(open(conf_path).read())
    drain = float(conf['drain-timeout'])

    unit_path = os.path.join(deploy, 'systemd', 'moeflow.service')
    unit_text = open(unit_path).read()
    unit = unit_items(unit_text)
    svc = lambda k: unit.get(('Service', k), [])
    check(svc('ExecStart') == ['/usr/local/bin/moeflow serve --config /etc/moeflow/serve.conf'],
          f'ExecStart {svc("ExecStart")}')
    check(svc('KillSignal') in ([], ['SIGTERM']), f'KillSignal {svc("KillSignal")}')
    stop = svc('TimeoutStopSec')
    check(len(stop) == 1 and float(stop[0]) > drain + 5,
          f'TimeoutStopSec {stop} is not above drain-timeout {drain} + 5 s')
    check(svc('Restart') == ['on-failure'], f'Restart {svc("Restart")}')
    check('2' in ' '.join(svc('RestartPreventExitStatus')).split(), 'RestartPreventExitStatus lacks 2')
    check(svc('LimitMEMLOCK') == ['infinity'], f'LimitMEMLOCK {svc("LimitMEMLOCK")}')
    for closes in ('PrivateDevices', 'DevicePolicy', 'DeviceAllow', 'ProtectClock', 'SystemCallFilter',
                   'MemoryDenyWriteExecute', 'ProcSubset'):
        check(not svc(closes), f'{closes} set: it would close the GPU device nodes, io_uring or /proc/driver')
    sysusers = open(os.path.join(deploy, 'systemd', 'moeflow-sysusers.conf')).read()
    users = [l.split()[1] for l in sysusers.splitlines() if l.startswith('u ')]
    check(svc('User') == users and users, f'User {svc("User")}, sysusers.d users {users}')

    analyze = shutil.which('systemd-analyze')
    if analyze:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'moeflow.service')
            with open(path, 'w') as f:  # the unit as installed: ExecStart names the binary
                f.write(unit_text.replace('ExecStart=/usr/local/bin/moeflow ', f'ExecStart={moeflow} '))
            r = subprocess.run([analyze, 'verify', path], capture_output=True, text=True, timeout=120)
            check(r.returncode == 0 and not r.stderr.strip(),
                  f'systemd-analyze verify: exit {r.returncode}: {r.stdout}{r.stderr}')
    else:
        print('systemd-analyze not installed: unit not verified', file=sys.stderr)

    if FAILURES:
        print(f'test_deploy_files: {len(FAILURES)} check(s) failed', file=sys.stderr)
        return 1
    print('test_deploy_files: ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
