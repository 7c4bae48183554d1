# --workers N: a supervisor and N worker processes sharing one port through
# SO_REUSEPORT; restarts after a crash, drain on SIGTERM, SIGHUP forwarded,
# and the open-file limit raised at start-up. Requests go without a client
# key (these gateways have no keys file), so CLIENT_SECRETS does not grow.
# Exec'd into run.py's namespace: its helpers and @test are in scope.

import shutil


def workers_upstream(ctx):
    m = ctx.env.mock(ctx.mode, 'workers')
    if ctx.mode == 'tls':
        return 'https://localhost:%d/v1' % m.port, ctx.env.ca
    return 'http://127.0.0.1:%d/v1' % m.port, None


def workers_gateway(ctx, name=None, workers=2, extra=()):
    """A gateway with --workers; shared (cached) unless it has a name of its own,
    in which case the test stops it (run.py checks only shared ones still serve)."""
    up, ca = workers_upstream(ctx)
    args = GW_ARGS + ['--workers', str(workers)] + list(extra)
    if name:
        return Gateway(ctx.env.args.gateway, name, up, ca, args)
    make = lambda: Gateway(ctx.env.args.gateway, 'gw-%s-workers%d' % (ctx.mode, workers), up, ca, args)
    return ctx.use(ctx.env._get(('gw', ctx.mode, 'workers%d' % workers), make))


def proc_state(pid):
    """(state letter, ppid) of a process, or None when it is gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            st = f.read()
    except OSError:
        return None
    rest = st[st.rindex(')') + 2:].split()
    return rest[0], int(rest[1])


def live_children(pid):
    """The supervisor's children that are not zombies, sorted."""
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:   # a kernel without CONFIG_PROC_CHILDREN: scan for the ppid
        kids = [int(d) for d in os.listdir('/proc') if d.isdigit() and (proc_state(int(d)) or ('', 0))[1] == pid]
    out = []
    for k in kids:
        s = proc_state(k)
        if s and s[0] != 'Z' and s[1] == pid:
            out.append(k)
    return sorted(out)


def wait_workers(gw, n, timeout=3.0, exclude=()):
    """n live workers (none of them in exclude), or fail."""
    def ready():
        kids = live_children(gw.pid)
        return kids if len(kids) == n and not set(kids) & set(exclude) else None
    kids = wait_until(ready, timeout * SCALE, step=0.01)
    check(kids, '%s: want %d workers (not %s), have %s' % (gw.name, n, list(exclude), live_children(gw.pid)))
    return kids


def tcp_inodes(port, state):
    """Socket inodes with this local port in this TCP state ('0A' listen, '01' established)."""
    out = set()
    for path in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and int(parts[1].rsplit(':', 1)[1], 16) == port and parts[3] == state:
                out.add(parts[9])
    return out


def socket_inodes(pid):
    out = set()
    try:
        fds = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            continue
        if target.startswith('socket:['):
            out.add(target[8:-1])
    return out


def connections_per_worker(gw, workers, n=16):
    """Opens n keep-alive connections, one /ping on each, and counts which
    worker holds the server side of each. Returns {pid: count}."""
    conns = []
    try:
        for _ in range(n):
            c = HTTPConn(gw.port)
            conns.append(c)
            c.send(build_request('GET', '/ping', [('Host', 'x')]))
            r = c.read_response(3)
            check(r.status == 200, '/ping answered %d' % r.status)
        established = tcp_inodes(gw.port, '01')
        return {pid: len(socket_inodes(pid) & established) for pid in workers}
    finally:
        for c in conns:
            c.close()


def open_files_limit(pid):
    with open('/proc/%d/limits' % pid) as f:
        for line in f:
            if line.startswith('Max open files'):
                soft, hard = line[len('Max open files'):].split()[:2]
                return soft, hard
    fail('no "Max open files" in /proc/%d/limits' % pid)


@test(timeout=40)
def workers_share_the_port(ctx):
    gw = workers_gateway(ctx)
    j = json.loads(gw.first_line)
    check(j.get('workers') == '2', 'the first "listen" line does not say workers=2: %s' % gw.first_line)
    kids = wait_workers(gw, 2)
    listeners = tcp_inodes(gw.port, '0A')
    for pid in kids:
        check(socket_inodes(pid) & listeners, 'worker %d has no listener on port %d' % (pid, gw.port))
    check(not socket_inodes(gw.pid) & listeners, 'the supervisor itself listens on port %d' % gw.port)

    per = connections_per_worker(gw, kids)
    check(sum(per.values()) == 16, 'workers hold %d of 16 connections: %s' % (sum(per.values()), per))
    check(all(v > 0 for v in per.values()), 'connections did not spread over the workers: %s' % per)
    figure('workers[%s]: 16 connections spread %s' % (ctx.mode, sorted(per.values())))

    for i in range(30):
        r = post_chat(gw.port, n=3, auth=False)
        check(r.status == 200, 'request %d answered %d: %s' % (i, r.status, short(r.body)))
    for i in range(6):
        head, st, c, _ = stream_chat(gw.port, n=12, auth=False)
        c.close()
        check_complete_stream(head, st, 12, 'stream %d: ' % i)
    check(live_children(gw.pid) == kids, 'workers changed while serving: %s -> %s' % (kids, live_children(gw.pid)))


@test(ANY, timeout=40)
def workers_survive_kill9(ctx):
    gw = workers_gateway(ctx, 'gw-workers-kill')
    try:
        kids = wait_workers(gw, 2)
        victim = kids[0]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        check(wait_until(lambda: victim not in live_children(gw.pid), 2.0 * SCALE, step=0.005),
              'the killed worker %d is still there' % victim)
        # the survivor takes every new connection at once
        for i in range(30):
            r = get(gw.port, '/ping', timeout=3)
            check(r.status == 200, '/ping %d after kill -9 answered %d' % (i, r.status))
        for i in range(5):
            r = post_chat(gw.port, n=2, auth=False)
            check(r.status == 200, 'chat %d after kill -9 answered %d' % (i, r.status))
        kids2 = wait_workers(gw, 2, timeout=1.5, exclude=[victim])
        figure('workers: a new worker %.0f ms after kill -9' % ((time.monotonic() - t0) * 1000))
        rec = gw.wait_log(lambda x: x.get('msg') == 'worker exited; restarting it' and x.get('pid') == str(victim))
        check(rec is not None, 'no log line about the killed worker')
        check(rec.get('level') == 'error' and rec.get('signal') == 'SIGKILL' and rec.get('restart_in_ms') == '100',
              'log line about the killed worker: %s' % rec)
        newcomer = [p for p in kids2 if p not in kids]
        check(len(newcomer) == 1, 'want one new worker: %s -> %s' % (kids, kids2))
        newcomer = newcomer[0]
        check(wait_until(lambda: connections_per_worker(gw, kids2)[newcomer] > 0, 3.0, step=0.05),
              'the new worker %d takes no connections' % newcomer)

        # a second crash of the same slot soon after: the backoff has doubled
        os.kill(newcomer, signal.SIGKILL)
        kids3 = wait_workers(gw, 2, timeout=2.0, exclude=[victim, newcomer])
        rec = gw.wait_log(lambda x: x.get('msg') == 'worker exited; restarting it' and x.get('pid') == str(newcomer))
        check(rec is not None and rec.get('restart_in_ms') == '200', 'second restart of a slot: %s' % rec)
        r = post_chat(gw.port, n=2, auth=False)
        check(r.status == 200, 'chat after the second restart answered %d' % r.status)
        check(gw.proc.alive(), 'the supervisor died')
        gw.proc.stop()
        check(gw.proc.p.returncode == 0, 'the supervisor exited %s on SIGTERM' % gw.proc.p.returncode)
        for pid in kids3:
            check(proc_state(pid) is None, 'worker %d outlived the supervisor' % pid)
    finally:
        gw.proc.stop()


@test(ANY, timeout=30)
def workers_drain_on_sigterm(ctx):
    gw = workers_gateway(ctx, 'gw-workers-drain')
    try:
        kids = wait_workers(gw, 2)
        c = HTTPConn(gw.port)
        c.send(build_request('POST', '/v1/chat/completions',
                             chat_headers(gw.port, n=10, delay=100, auth=False), chat_body(True)))
        head = c.read_head(5)
        check(head.status == 200, 'stream before SIGTERM answered %d' % head.status)
        holder = [p for p in kids if socket_inodes(p) & tcp_inodes(gw.port, '01')]
        check(len(holder) == 1, 'cannot tell which worker serves the stream: %s' % holder)

        os.kill(gw.pid, signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(('127.0.0.1', gw.port), timeout=0.5).close()
                return False
            except OSError:
                return True
        check(wait_until(refused, 2.0, step=0.02), 'the port still accepts after SIGTERM')
        idle = [p for p in kids if p != holder[0]][0]
        check(wait_until(lambda: proc_state(idle) is None, 2.0 * SCALE, step=0.01),
              'the idle worker %d did not exit on SIGTERM' % idle)
        check(gw.proc.alive(), 'the supervisor exited while a stream was in flight')
        st = read_stream(c, head, 10)
        c.close()
        check(st.terminated and not st.errors(), 'the stream in flight did not finish: ' + st.describe())
        check(st.content() == expected_content(10), 'stream content changed by the drain')
        try:
            rc = gw.proc.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            fail('the supervisor did not exit after the last stream ended')
        check(rc == 0, 'the supervisor exited %s after draining' % rc)
        for pid in kids:
            check(proc_state(pid) is None, 'worker %d is still there after the supervisor exited' % pid)
        recs = gw.log_records()
        check(sum(1 for r in recs if r.get('msg') == 'draining') == 2, 'want a "draining" line from each worker')
        check(any(r.get('msg') == 'stopping workers' and r.get('reason') == 'SIGTERM' for r in recs),
              'no "stopping workers" line from the supervisor')
        exits = [r for r in recs if r.get('msg') == 'worker exited']
        check(len(exits) == 2 and all(r.get('exit_code') == '0' for r in exits), 'worker exits: %s' % exits)
    finally:
        gw.proc.stop()


@test(ANY, timeout=20)
def workers_survive_sighup(ctx):
    gw = workers_gateway(ctx)
    kids = wait_workers(gw, 2)
    for round_ in range(2):
        os.kill(gw.pid, signal.SIGHUP)
        check(gw.wait_log(lambda x: x.get('msg') == 'forwarding to workers' and x.get('signal') == 'SIGHUP'
                          and x.get('workers') == '2') is not None, 'no line about forwarding SIGHUP')
        time.sleep(0.2)
        check(gw.proc.alive(), 'the supervisor died of SIGHUP')
        check(live_children(gw.pid) == kids, 'workers changed after SIGHUP: %s -> %s'
              % (kids, live_children(gw.pid)))
        for i in range(10):
            r = get(gw.port, '/ping', timeout=3)
            check(r.status == 200, 'round %d: /ping %d after SIGHUP answered %d' % (round_, i, r.status))
        head, st, c, _ = stream_chat(gw.port, n=4, auth=False)
        c.close()
        check_complete_stream(head, st, 4, 'after SIGHUP: ')
    check(not [r for r in gw.log_records() if r.get('msg', '').startswith('worker exited')],
          'a worker exited after SIGHUP')


@test(ANY, timeout=20)
def workers_raise_open_file_limit(ctx):
    gw = workers_gateway(ctx)
    kids = wait_workers(gw, 2)
    for pid in [gw.pid] + kids:
        soft, hard = open_files_limit(pid)
        check(soft == hard, 'process %d: open files soft %s, hard %s' % (pid, soft, hard))
    check(not [r for r in gw.log_records() if 'open-file limit' in r.get('msg', '')],
          'a warning about the open-file limit with the default limits')


def limited_gateway(ctx, name, workers, nofile, max_conns):
    """A gateway started under `prlimit --nofile=N:N` (prlimit execs it: same pid)."""
    up, _ = workers_upstream(ctx)
    argv = ['prlimit', '--nofile=%d:%d' % (nofile, nofile), '--', ctx.env.args.gateway,
            '--listen', '127.0.0.1:0', '--upstream', up, '--log-format', 'json',
            '--workers', str(workers), '--max-conns', str(max_conns)] + GW_ARGS
    gw = Gateway.__new__(Gateway)
    gw.name, gw.argv = name, argv
    gw.proc = Proc(name, argv, env=clean_env({'OPENAI_API_KEY': UPSTREAM_KEY}))
    got = gw.proc.wait_line('err', lambda l: '"listen"' in l, 10 * SCALE)
    check(got, '%s printed no "listen" line (exit %s): %s' % (name, gw.proc.p.poll(), gw.proc.tail()))
    m = re.search(r'"listen"\s*:\s*"127\.0\.0\.1:(\d+)"', got[1])
    check(m, '%s: no port in %r' % (name, got[1]))
    gw.port, gw.first_line = int(m.group(1)), got[1]
    return gw


@test(ANY, timeout=20, params=[1, 2])
def open_file_limit_warning(ctx, workers):
    if not shutil.which('prlimit'):
        fail('prlimit (util-linux) is not installed')
    gw = limited_gateway(ctx, 'gw-nofile64-workers%d' % workers, workers, 64, 100)
    rec = gw.wait_log(lambda x: 'open-file limit' in x.get('msg', ''))
    check(rec is not None, 'no warning about 64 open files for --max-conns 100')
    check(rec.get('level') == 'warn' and rec.get('nofile') == '64' and rec.get('max_conns') == '100',
          'warning: %s' % rec)
    check(sum(1 for r in gw.log_records() if 'open-file limit' in r.get('msg', '')) == 1,
          'the warning is not said once (by the first process only)')
    r = post_chat(gw.port, n=2, auth=False)
    check(r.status == 200, 'a gateway with 64 open files answered %d' % r.status)
    for pid in [gw.pid] + live_children(gw.pid):
        check(open_files_limit(pid) == ('64', '64'), 'process %d limits: %s' % (pid, open_files_limit(pid)))
    gw.proc.stop()
    check(gw.proc.p.returncode == 0, '%s exited %s on SIGTERM' % (gw.name, gw.proc.p.returncode))


@test(ANY, timeout=15)
def workers_out_of_range_refused(ctx):
    up, _ = workers_upstream(ctx)
    for n in ('0', '257', 'many'):
        p = Proc('cfg-workers-' + n, [ctx.env.args.gateway, '--listen', '127.0.0.1:0', '--upstream', up,
                                      '--workers', n], env=clean_env({'OPENAI_API_KEY': UPSTREAM_KEY}))
        try:
            rc = p.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            p.kill_now()
            fail('--workers %s: the gateway started' % n)
        check(rc == 2, '--workers %s: exit %s, want 2' % (n, rc))
        got = p.wait_line('err', lambda l: '--workers' in l, 1.0)
        check(got, '--workers %s: stderr does not name the flag: %s' % (n, p.tail(3)))
