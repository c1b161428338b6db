"""The deployment files of deploy/ against the server they deploy: usage: test_deploy_files.py MOEFLOW SRC.

serve.conf passes `moeflow serve --check-config` (every key is an option, every value in range); the
systemd unit runs serve on /etc/moeflow/serve.conf, stops it by SIGTERM with time for serve.conf's
drain, restarts it after a failure but not after a bad config (exit 2), raises RLIMIT_MEMLOCK for
io_uring's registered buffers, keeps the GPU's device nodes and io_uring reachable, runs as the user
of the sysusers.d entry, and passes `systemd-analyze verify` (where systemd-analyze is installed).
The Kubernetes manifest (python3-yaml) holds a ConfigMap with serve.conf's settings (and it passes
--check-config), a Deployment that runs serve on it with one GPU, probes /ready and /health on the
HTTP port, waits for the drain, mounts the model and the store where serve.conf says, and has
Prometheus scrape /metrics, and a Service for both ports; kubectl (where installed) decodes the
Deployment and the Service into the API's types offline and loses no field of them."""
import json
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


def leaves(node, path=()):
    """Every leaf of a YAML/JSON tree as (path, value)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, path + (i,))
    else:
        yield path, node


def check_kubernetes(yaml, moeflow, path, conf):
    docs = {d['kind']: d for d in yaml.safe_load_all(open(path)) if d}
    check(sorted(docs) == ['ConfigMap', 'Deployment', 'Service'], f'{path}: kinds {sorted(docs)}')
    cm, dep, svc = docs.get('ConfigMap', {}), docs.get('Deployment', {}), docs.get('Service', {})

    # the ConfigMap's serve.conf: serve.conf's settings, checked by the server
    text = cm.get('data', {}).get('serve.conf', '')
    check(conf_items(text) == conf, 'the ConfigMap\'s serve.conf differs from deploy/serve.conf: '
          f'{set(conf_items(text).items()) ^ set(conf.items())}')
    with tempfile.NamedTemporaryFile('w', suffix='.conf') as f:
        f.write(text)
        f.flush()
        check_config(moeflow, f.name)
    check(conf.get('host') == '0.0.0.0', f'host {conf.get("host")}: the probes and the Service need every address')
    http, grpc = int(conf['http-port']), int(conf['grpc-port'])

    pod = dep['spec']['template']['spec']
    containers = pod['containers']
    check(len(containers) == 1, f'{len(containers)} containers')
    c = containers[0]
    mounts = {m['name']: m for m in c.get('volumeMounts', [])}
    volumes = {v['name']: v for v in pod.get('volumes', [])}
    cm_vol = [n for n, v in volumes.items() if v.get('configMap', {}).get('name') == cm['metadata']['name']]
    check(len(cm_vol) == 1 and cm_vol[0] in mounts, f'ConfigMap volume {cm_vol} not mounted')
    if cm_vol and cm_vol[0] in mounts:
        want = ['moeflow', 'serve', '--config', mounts[cm_vol[0]]['mountPath'] + '/serve.conf']
        check(c.get('command', []) + c.get('args', []) == want, f'command {c.get("command")} {c.get("args")}')
    check(str(c['resources']['limits'].get('nvidia.com/gpu')) == '1', 'limits nvidia.com/gpu is not 1')
    ports = {p['name']: p['containerPort'] for p in c['ports']}
    check(ports == {'http': http, 'grpc': grpc}, f'container ports {ports}, serve.conf {http} and {grpc}')

    def probe(name, want_path):
        p = c.get(name, {}).get('httpGet', {})
        port = ports.get(p.get('port'), p.get('port'))
        check(p.get('path') == want_path and port == http, f'{name}: {p}, wanted {want_path} on {http}')
        return c.get(name, {})
    startup = probe('startupProbe', '/ready')
    probe('readinessProbe', '/ready')
    probe('livenessProbe', '/health')
    budget = startup.get('periodSeconds', 10) * startup.get('failureThreshold', 3)
    check(budget >= 600, f'startupProbe allows {budget} s to load the model; at least 600')
    grace = pod.get('terminationGracePeriodSeconds', 30)
    check(grace > float(conf['drain-timeout']) + 5,
          f'terminationGracePeriodSeconds {grace} is not above drain-timeout {conf["drain-timeout"]} + 5 s')

    # the model and the store on the mounted NVMe volume
    data = [m for n, m in mounts.items() if 'hostPath' in volumes.get(n, {}) or
            'persistentVolumeClaim' in volumes.get(n, {})]
    for key in ('model', 'store'):
        check(any(conf[key].startswith(m['mountPath'] + '/') for m in data),
              f'serve.conf {key} {conf[key]} is on no mounted volume')

    ann = dep['spec']['template']['metadata'].get('annotations', {})
    check(ann.get('prometheus.io/scrape') == 'true' and ann.get('prometheus.io/path') == '/metrics' and
          ann.get('prometheus.io/port') == str(http), f'Prometheus annotations {ann}')
    check(svc['spec']['selector'] == dep['spec']['selector']['matchLabels'] ==
          dep['spec']['template']['metadata']['labels'], 'the Service\'s selector does not select the pods')
    targets = {p['name']: ports.get(p['targetPort'], p['targetPort']) for p in svc['spec']['ports']}
    check(targets == {'http': http, 'grpc': grpc}, f'Service target ports {targets}')

    kubectl = shutil.which('kubectl')
    if not kubectl:
        print('kubectl not installed: the manifest not decoded', file=sys.stderr)
        return
    # `kubectl set ... --local` decodes into the API's Go types without a cluster: a value of the
    # wrong type fails, a misspelt field is dropped, so every leaf must come back
    for doc, args in ((dep, ['env', 'MOEFLOW_CHECK=1']), (svc, ['selector', 'app.kubernetes.io/name=moeflow'])):
        with tempfile.NamedTemporaryFile('w', suffix='.yaml') as f:
            yaml.safe_dump(doc, f)
            f.flush()
            r = subprocess.run([kubectl, 'set', args[0], '--local', '-f', f.name, args[1], '-o', 'json'],
                               capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f'kubectl set {args[0]} --local on the {doc["kind"]}: {r.stderr}')
        if r.returncode == 0:
            back = dict(leaves(json.loads(r.stdout)))
            lost = [p for p, v in leaves(doc) if back.get(p) != v and str(back.get(p)) != str(v)]
            check(not lost, f'{doc["kind"]}: fields kubectl did not keep: {lost}')


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

    try:
        import yaml
    except ImportError:
        yaml = None
        print('python3-yaml not installed: the Kubernetes manifest not checked', file=sys.stderr)
    if yaml:
        check_kubernetes(yaml, moeflow, os.path.join(deploy, 'kubernetes', 'moeflow.yaml'), conf)

    if FAILURES:
        print(f'test_deploy_files: {len(FAILURES)} check(s) failed', file=sys.stderr)
        return 1
    print('test_deploy_files: ok')
    return 0


if __name__ == '__main__':
    sys.exit(main())
