# Client authentication by JWT (§3): HS256/384/512 with a secret file, RS and
# ES with PEM public keys or a JWKS file, the claims checks, limits from the
# token, and start-up refusals, through the real gateway against the mock.
# Tokens are made here: HMAC with hmac/hashlib, RSA and ECDSA signatures with
# the openssl CLI (keys generated once into a temp dir).
# Exec'd into run.py's namespace after suite_auth.py: its helpers are in scope.

import base64
import hmac

JWT_DIR = tempfile.mkdtemp(prefix='ssegate-jwt-')
atexit.register(shutil.rmtree, JWT_DIR, True)

JWT_SECRET = ('jwt-it-secret-' + uuid.uuid4().hex).encode()
JWT_ISSUER = 'https://issuer.ssegate.test'
JWT_AUDIENCE = 'ssegate-it'
JWT_LOCK = threading.Lock()
JWT_FILES = {}        # name -> path, made once by jwt_files()
JWT_SENT = set()      # every token sent, for the log check at the end


def b64u(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b'=').decode()


def b64u_dec(text):
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def compact(obj):
    """JSON bytes for a header or claims: a dict, or bytes taken as they are."""
    return obj if isinstance(obj, bytes) else json.dumps(obj, separators=(',', ':')).encode()


def der_next(buf, pos):
    """One DER element at pos: (tag, content start, content end)."""
    check(pos + 2 <= len(buf), 'DER: truncated at %d' % pos)
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7f
        check(1 <= k <= 4 and pos + k <= len(buf), 'DER: bad length at %d' % pos)
        n = int.from_bytes(buf[pos:pos + k], 'big')
        pos += k
    check(pos + n <= len(buf), 'DER: element overruns its buffer')
    return tag, pos, pos + n


def der_children(buf, start, end):
    out = []
    while start < end:
        tag, s, e = der_next(buf, start)
        out.append((tag, buf[s:e]))
        start = e
    return out


def pem_der(path):
    with open(path) as f:
        text = f.read()
    body = text.split('-----', 2)[2].split('-----END', 1)[0]
    return base64.b64decode(''.join(body.split()))


def rsa_jwk(pub_pem, kid):
    """A JWK for the RSA SubjectPublicKeyInfo in pub_pem (n and e from its DER)."""
    spki = pem_der(pub_pem)
    tag, s, e = der_next(spki, 0)
    parts = der_children(spki, s, e)
    check(tag == 0x30 and len(parts) == 2 and parts[1][0] == 0x03 and parts[1][1][0] == 0,
          '%s: not an RSA SubjectPublicKeyInfo' % pub_pem)
    rsa = parts[1][1][1:]
    tag, s, e = der_next(rsa, 0)
    ints = der_children(rsa, s, e)
    check(len(ints) == 2 and all(t == 0x02 for t, _ in ints), '%s: not an RSAPublicKey' % pub_pem)
    n, ex = (v.lstrip(b'\0') for _, v in ints)
    return {'kty': 'RSA', 'kid': kid, 'use': 'sig', 'alg': 'RS256', 'n': b64u(n), 'e': b64u(ex)}


def ecdsa_raw(der_sig, size):
    """openssl's DER ECDSA-Sig-Value as the r||s that JWS wants."""
    tag, s, e = der_next(der_sig, 0)
    ints = der_children(der_sig, s, e)
    check(tag == 0x30 and len(ints) == 2 and all(t == 0x02 for t, _ in ints), 'not a DER ECDSA signature')
    out = b''
    for _, v in ints:
        v = v.lstrip(b'\0')
        check(len(v) <= size, 'ECDSA integer longer than the curve')
        out += v.rjust(size, b'\0')
    return out


def jwt_files():
    """Keys, once: the secret file, RSA keys one and two, EC P-256 and P-384;
    a PEM file of public keys (RSA one, both EC), a JWKS of both RSA keys."""
    with JWT_LOCK:
        if JWT_FILES:
            return JWT_FILES
        d = JWT_DIR
        files = {}
        path = os.path.join(d, 'secret')
        with open(path, 'wb') as f:
            f.write(JWT_SECRET + b'\n')   # the trailing newline is not part of the secret
        files['secret'] = path
        gens = {'rsa1': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
                'rsa2': ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
                'ec256': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'],
                'ec384': ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384']}
        procs = {name: subprocess.Popen(['openssl', 'genpkey'] + args + ['-out', name + '.key'], cwd=d,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
                 for name, args in gens.items()}
        for name, p in procs.items():
            _, err = p.communicate(timeout=30)
            if p.returncode != 0:
                raise RuntimeError('openssl genpkey %s: %s' % (name, err.decode(errors='replace')))
        for name in gens:
            openssl(['pkey', '-in', name + '.key', '-pubout', '-out', name + '.pub'], d)
            files[name] = os.path.join(d, name + '.key')
            files[name + '.pub'] = os.path.join(d, name + '.pub')
        path = os.path.join(d, 'public.pem')
        with open(path, 'w') as f:
            for name in ('rsa1', 'ec256', 'ec384'):
                with open(files[name + '.pub']) as src:
                    f.write(src.read())
        files['public.pem'] = path
        path = os.path.join(d, 'jwks.json')
        with open(path, 'w') as f:
            json.dump({'keys': [rsa_jwk(files['rsa1.pub'], 'rsa-one'), rsa_jwk(files['rsa2.pub'], 'rsa-two')]},
                      f, indent=1)
        files['jwks.json'] = path
        JWT_FILES.update(files)
        return JWT_FILES


HS_HASH = {'HS256': hashlib.sha256, 'HS384': hashlib.sha384, 'HS512': hashlib.sha512}
PK_ALGS = {'RS256': ('sha256', None), 'RS384': ('sha384', None), 'RS512': ('sha512', None),
           'ES256': ('sha256', 32), 'ES384': ('sha384', 48)}


def claims(sub, **kw):
    """Claims valid for ten minutes; a keyword set to None is left out."""
    now = int(time.time())
    c = {'sub': sub, 'iat': now, 'exp': now + 600}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def signing_input(header, payload):
    return b64u(compact(header)) + '.' + b64u(compact(payload))


def hs_token(payload, alg='HS256', key=None, header=None):
    h = header if header is not None else {'alg': alg, 'typ': 'JWT'}
    inp = signing_input(h, payload)
    sig = hmac.new(JWT_SECRET if key is None else key, inp.encode(), HS_HASH[alg]).digest()
    return inp + '.' + b64u(sig)


def pk_sign(key, alg, data, raw=True):
    md, size = PK_ALGS[alg]
    r = subprocess.run(['openssl', 'dgst', '-' + md, '-sign', jwt_files()[key]], input=data,
                       capture_output=True, timeout=10)
    check(r.returncode == 0, 'openssl dgst -sign: %s' % r.stderr.decode(errors='replace'))
    return ecdsa_raw(r.stdout, size) if size and raw else r.stdout


def pk_token(payload, alg, key, kid=None, header=None, raw=True):
    h = header if header is not None else dict({'alg': alg, 'typ': 'JWT'}, **({'kid': kid} if kid else {}))
    inp = signing_input(h, payload)
    return inp + '.' + b64u(pk_sign(key, alg, inp.encode(), raw))


def jwt_pair(ctx, tag, extra, with_keys=False):
    """A gateway with JWT keys (and the suite's keys file when asked), and a mock of its own."""
    mock = ctx.env.mock(ctx.mode, 'jwt-' + tag)

    def make():
        if ctx.mode == 'tls':
            up, ca = 'https://localhost:%d/v1' % mock.port, ctx.env.ca
        else:
            up, ca = 'http://127.0.0.1:%d/v1' % mock.port, None
        args = GW_ARGS + (['--keys-file', auth_keys_path()] if with_keys else []) + list(extra)
        return Gateway(ctx.env.args.gateway, 'gw-%s-jwt-%s' % (ctx.mode, tag), up, ca, args)
    gw = ctx.env._get(('gw', ctx.mode, 'jwt-' + tag), make)
    return mock, ctx.use(gw)


def hs_pair(ctx):
    """Secret and keys file together, default leeway (30 s), no iss/aud policy."""
    return jwt_pair(ctx, 'hs', ['--jwt-secret-file', jwt_files()['secret']], with_keys=True)


def pub_pair(ctx):
    """Public keys only (RSA one, EC P-256, EC P-384 in one PEM file)."""
    return jwt_pair(ctx, 'pub', ['--jwt-keys-file', jwt_files()['public.pem']])


def jwks_pair(ctx):
    return jwt_pair(ctx, 'jwks', ['--jwt-keys-file', jwt_files()['jwks.json']])


def policy_pair(ctx):
    """Secret, a required issuer and audience, and a 5 s leeway."""
    return jwt_pair(ctx, 'policy', ['--jwt-secret-file', jwt_files()['secret'], '--jwt-issuer', JWT_ISSUER,
                                    '--jwt-audience', JWT_AUDIENCE, '--jwt-leeway', '5s'])


def jwt_chat(gw, token, rid=None, conn=None, stream=False, extra=()):
    if len(token) >= 16:   # short junk could match log text by chance
        CLIENT_SECRETS.add('Bearer ' + token)
        JWT_SENT.add(token)
    hs = [('X-Request-Id', rid)] if rid else []
    return chat(gw.port, token, conn=conn, stream=stream, extra=hs + list(extra))


def check_jwt_ok(gw, mock, token, sub, what):
    rid = 'jwt-ok-' + uuid.uuid4().hex[:10]
    r = jwt_chat(gw, token, rid)
    check(r.status == 200, '%s: status %d %s' % (what, r.status, short(r.body)))
    up = mock.last()['headers']
    check(up.get('authorization') == 'Bearer ' + UPSTREAM_KEY, '%s: upstream Authorization %r'
          % (what, up.get('authorization')))
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None, '%s: no log line for %s' % (what, rid))
    check(rec.get('client') == sub, '%s: log client %r, want the sub %r' % (what, rec.get('client'), sub))
    return r


def check_jwt_401(r, want, what, token=None):
    """A refused token: 401 with exactly the §6 error object and error="invalid_token"."""
    check(r.status == 401, '%s: status %d, want 401: %s' % (what, r.status, short(r.body)))
    check(r.header('content-type', '').startswith('application/json'), '%s: Content-Type %r'
          % (what, r.header('content-type')))
    e = check_error_shape(r.body, what)
    j = json.loads(r.body)
    check(list(j) == ['error'] and sorted(e) == ['code', 'message', 'param', 'type'],
          '%s: members of the error body: %s' % (what, short(r.body)))
    check(e['type'] == 'invalid_request_error' and e['param'] is None and e['code'] == 'invalid_token',
          '%s: type/param/code %r %r %r' % (what, e['type'], e['param'], e['code']))
    check(e['message'].startswith('invalid token: '), '%s: message %r' % (what, e['message']))
    check(want in e['message'], '%s: message %r does not say %r' % (what, e['message'], want))
    wa = r.header('www-authenticate', '')
    check(wa.lower().startswith('bearer ') and 'error="invalid_token"' in wa, '%s: WWW-Authenticate %r' % (what, wa))
    if token:
        text = r.raw.decode('utf-8', 'replace') + r.body.decode('utf-8', 'replace')
        check(token not in text, '%s: the token came back in the answer' % what)
    return e


def check_refused(gw, mock, token, want, what, conn=None):
    before = requests_seen(mock)
    r = jwt_chat(gw, token, conn=conn)
    check_jwt_401(r, want, what, token)
    check(requests_seen(mock) == before, '%s: the upstream was asked for a refused token' % what)


def auth_failures(gw, reason='invalid_token'):
    page = get(gw.port, '/metrics').body.decode()
    m = re.search(r'^ssegate_auth_failures_total\{reason="%s"\} (\d+)$' % reason, page, re.M)
    check(m, '/metrics has no auth_failures_total{reason="%s"}' % reason)
    return int(m.group(1))


# --- valid tokens --------------------------------------------------------------

@test(ANY)
def jwt_hs256_valid_names_client(ctx):
    mock, gw = hs_pair(ctx)
    sub = 'jwt-user-' + uuid.uuid4().hex[:6]
    check_jwt_ok(gw, mock, hs_token(claims(sub)), sub, 'HS256')
    # streamed too, and without typ in the header
    tok = hs_token(claims(sub), header={'alg': 'HS256'})
    CLIENT_SECRETS.add('Bearer ' + tok)
    JWT_SENT.add(tok)
    head, st, c, _ = stream_chat(gw.port, n=4, auth=False, extra=[('Authorization', 'Bearer ' + tok)])
    c.close()
    check_complete_stream(head, st, 4, 'HS256 stream: ')
    page = get(gw.port, '/metrics').body.decode()
    check('client="%s"' % sub in page, 'the sub is no client label in /metrics')


@test(ANY)
def jwt_hs384_hs512_valid(ctx):
    mock, gw = hs_pair(ctx)
    for alg in ('HS384', 'HS512'):
        sub = 'jwt-%s-%s' % (alg.lower(), uuid.uuid4().hex[:6])
        check_jwt_ok(gw, mock, hs_token(claims(sub), alg), sub, alg)
    # a token of one HS size does not pass as another
    inp = signing_input({'alg': 'HS512'}, claims('jwt-mixed'))
    tok = inp + '.' + b64u(hmac.new(JWT_SECRET, inp.encode(), hashlib.sha256).digest())
    check_refused(gw, mock, tok, 'bad signature', 'HS512 header, HS256 signature')


@test(ANY)
def jwt_rs_es_valid(ctx):
    mock, gw = pub_pair(ctx)
    for alg, key in (('RS256', 'rsa1'), ('RS384', 'rsa1'), ('RS512', 'rsa1'), ('ES256', 'ec256'),
                     ('ES384', 'ec384')):
        sub = 'jwt-%s-%s' % (alg.lower(), uuid.uuid4().hex[:6])
        check_jwt_ok(gw, mock, pk_token(claims(sub), alg, key), sub, alg)
    # ECDSA in DER (openssl's form) is not the JWS form
    check_refused(gw, mock, pk_token(claims('jwt-der'), 'ES256', 'ec256', raw=False), 'bad signature',
                  'ES256 with a DER signature')
    # a key of another curve or kind
    check_refused(gw, mock, pk_token(claims('jwt-x'), 'ES384', 'ec256', header={'alg': 'ES384'}), 'bad signature',
                  'ES384 header, P-256 signature')
    check_refused(gw, mock, pk_token(claims('jwt-y'), 'RS256', 'rsa2'), 'bad signature',
                  'RS256 by a key not configured')


# --- time ------------------------------------------------------------------------

@test(ANY)
def jwt_exp_and_leeway(ctx):
    mock, gw = hs_pair(ctx)
    now = int(time.time())
    check_refused(gw, mock, hs_token(claims('jwt-old', exp=now - 120, iat=now - 720)), 'expired',
                  'expired 120 s ago (leeway 30 s)')
    check_refused(gw, mock, hs_token(claims('jwt-older', exp=1000000000, iat=None)), 'expired',
                  'expired in 2001')
    check_jwt_ok(gw, mock, hs_token(claims('jwt-skew', exp=now - 10)), 'jwt-skew', 'expired 10 s ago (within 30 s)')
    check_refused(gw, mock, hs_token(claims('jwt-noexp', exp=None)), 'exp is missing', 'no exp')
    # --jwt-leeway 5s on another gateway
    mock2, gw2 = policy_pair(ctx)
    aud = {'iss': JWT_ISSUER, 'aud': JWT_AUDIENCE}
    check_refused(gw2, mock2, hs_token(claims('jwt-l5', exp=now - 20, **aud)), 'expired',
                  'expired 20 s ago (leeway 5 s)')
    check_jwt_ok(gw2, mock2, hs_token(claims('jwt-l5b', exp=now - 1, **aud)), 'jwt-l5b',
                 'expired 1 s ago (leeway 5 s)')


@test(ANY)
def jwt_nbf(ctx):
    mock, gw = hs_pair(ctx)
    now = int(time.time())
    check_refused(gw, mock, hs_token(claims('jwt-early', nbf=now + 300)), 'not yet valid',
                  'nbf in 5 minutes')
    check_jwt_ok(gw, mock, hs_token(claims('jwt-nearly', nbf=now + 10)), 'jwt-nearly', 'nbf in 10 s (leeway 30 s)')
    check_jwt_ok(gw, mock, hs_token(claims('jwt-since', nbf=now - 60)), 'jwt-since', 'nbf a minute ago')


# --- issuer and audience --------------------------------------------------------

@test(ANY)
def jwt_issuer_audience(ctx):
    mock, gw = policy_pair(ctx)
    good = {'iss': JWT_ISSUER, 'aud': JWT_AUDIENCE}
    check_jwt_ok(gw, mock, hs_token(claims('jwt-aud', **good)), 'jwt-aud', 'right iss and aud')
    check_jwt_ok(gw, mock, hs_token(claims('jwt-aud-list', iss=JWT_ISSUER, aud=['other', JWT_AUDIENCE])),
                 'jwt-aud-list', 'aud an array holding the audience')
    cases = [
        ('wrong iss', dict(good, iss='https://evil.test'), 'wrong issuer'),
        ('iss with a trailing slash', dict(good, iss=JWT_ISSUER + '/'), 'wrong issuer'),
        ('no iss', dict(good, iss=None), 'iss is missing'),
        ('iss not a string', dict(good, iss=7), 'iss is not a string'),
        ('wrong aud', dict(good, aud='ssegate-other'), 'wrong audience'),
        ('aud a prefix', dict(good, aud=JWT_AUDIENCE[:-1]), 'wrong audience'),
        ('aud array without it', dict(good, aud=['a', 'b']), 'wrong audience'),
        ('empty aud array', dict(good, aud=[]), 'wrong audience'),
        ('no aud', dict(good, aud=None), 'aud is missing'),
        ('aud a number', dict(good, aud=42), 'aud is not a string or an array'),
        ('aud array with a number', dict(good, aud=[JWT_AUDIENCE, 1]), 'aud is not a string or an array'),
    ]
    for what, extra, want in cases:
        check_refused(gw, mock, hs_token(claims('jwt-pol', **extra)), want, what)
    # without a policy, iss and aud are not checked
    mock2, gw2 = hs_pair(ctx)
    check_jwt_ok(gw2, mock2, hs_token(claims('jwt-any-iss', iss='whoever', aud=['x'])), 'jwt-any-iss',
                 'iss and aud on a gateway without a policy')


# --- algorithms -------------------------------------------------------------------

@test(ANY)
def jwt_alg_none_refused(ctx):
    mock, gw = hs_pair(ctx)
    mock2, gw2 = pub_pair(ctx)
    payload = claims('jwt-none')
    for alg in ('none', 'None', 'NONE', 'nOnE'):
        inp = signing_input({'alg': alg, 'typ': 'JWT'}, payload)
        check_refused(gw, mock, inp + '.', 'alg none', 'alg %s, no signature' % alg)
        sig = b64u(hmac.new(JWT_SECRET, inp.encode(), hashlib.sha256).digest())
        check_refused(gw, mock, inp + '.' + sig, 'alg none', 'alg %s with an HMAC signature' % alg)
        check_refused(gw2, mock2, inp + '.' + sig, 'alg none', 'alg %s to public keys' % alg)
    for alg, want in (('HS257', 'unknown alg'), ('PS256', 'unknown alg'), ('hs256', 'unknown alg'),
                      ('', 'unknown alg')):
        check_refused(gw, mock, hs_token(payload, header={'alg': alg}), want, 'alg %r' % alg)
    check_refused(gw, mock, hs_token(payload, header={'typ': 'JWT'}), 'no alg', 'no alg')
    check_refused(gw, mock, hs_token(payload, header={'alg': ['HS256']}), 'alg is not a string', 'alg an array')


@test(ANY)
def jwt_alg_confusion_refused(ctx):
    mock, gw = pub_pair(ctx)
    files = jwt_files()
    with open(files['rsa1.pub'], 'rb') as f:
        pem = f.read()
    payload = claims('jwt-confused')
    # the classic attack: HMAC keyed with the public key the gateway verifies RS256 with
    for key in (pem, pem.rstrip(b'\n')):
        check_refused(gw, mock, hs_token(payload, key=key), 'alg confusion', 'HS256 keyed with the RSA public PEM')
        check_refused(gw, mock, hs_token(payload, key=key, header={'alg': 'HS256', 'kid': 'rsa-one'}),
                      'alg confusion', 'HS256 keyed with the RSA PEM, kid of the RSA key')
    mock2, gw2 = jwks_pair(ctx)
    check_refused(gw2, mock2, hs_token(payload, key=pem), 'alg confusion', 'HS256 to a JWKS gateway')
    # and the other way: a public-key alg on a gateway that only has a secret
    mock3, gw3 = policy_pair(ctx)
    pol = claims('jwt-confused', iss=JWT_ISSUER, aud=JWT_AUDIENCE)
    check_refused(gw3, mock3, pk_token(pol, 'RS256', 'rsa1'), 'only an HMAC secret', 'RS256 to a secret-only gateway')
    # an ES key's signature presented as RS256
    inp = signing_input({'alg': 'RS256'}, payload)
    check_refused(gw, mock, inp + '.' + b64u(pk_sign('ec256', 'ES256', inp.encode())), 'bad signature',
                  'ECDSA signature under alg RS256')


@test(ANY)
def jwt_tampered_refused(ctx):
    mock, gw = hs_pair(ctx)
    mock2, gw2 = pub_pair(ctx)
    for label, g, m, tok in (('HS256', gw, mock, hs_token(claims('jwt-meek'))),
                             ('RS256', gw2, mock2, pk_token(claims('jwt-meek'), 'RS256', 'rsa1')),
                             ('ES256', gw2, mock2, pk_token(claims('jwt-meek'), 'ES256', 'ec256'))):
        h, p, s = tok.split('.')
        evil = b64u(compact(dict(json.loads(b64u_dec(p)), sub='admin', rpm=None)))
        check_refused(g, m, '.'.join((h, evil, s)), 'bad signature', '%s: payload changed' % label)
        raised = b64u(compact(dict(json.loads(b64u_dec(p)), exp=int(time.time()) + 10 ** 6)))
        check_refused(g, m, '.'.join((h, raised, s)), 'bad signature', '%s: exp raised' % label)
        sig = bytearray(b64u_dec(s))
        sig[len(sig) // 2] ^= 0x01
        check_refused(g, m, '.'.join((h, p, b64u(bytes(sig)))), 'bad signature', '%s: a signature bit flipped' % label)
        check_refused(g, m, '.'.join((h, p, b64u(b64u_dec(s)[:-4]))), 'bad signature', '%s: signature cut short' % label)
    # a signature made with another secret
    check_refused(gw, mock, hs_token(claims('jwt-other'), key=b'not-the-secret'), 'bad signature', 'other secret')
    # the secret file's trailing newline is not part of the secret
    check_refused(gw, mock, hs_token(claims('jwt-nl'), key=JWT_SECRET + b'\n'), 'bad signature',
                  'secret with its newline')


# --- size and shape ---------------------------------------------------------------

def hs_token_of_length(n, sub):
    """A valid HS256 token of exactly n characters (a padding claim sized to fit)."""
    for header in ({'alg': 'HS256', 'typ': 'JWT'}, {'alg': 'HS256'}, {'typ': 'JWT', 'alg': 'HS256', 'x': 1}):
        base = len(hs_token(claims(sub, pad=''), header=header))
        for extra in range(max(0, (n - base) * 3 // 4 - 8), (n - base) * 3 // 4 + 8):
            tok = hs_token(claims(sub, pad='p' * extra), header=header)
            if len(tok) == n:
                return tok
    fail('cannot make a token of %d characters' % n)


@test(ANY)
def jwt_size_limit(ctx):
    mock, gw = hs_pair(ctx)
    at_limit = hs_token_of_length(8192, 'jwt-big')
    over = hs_token_of_length(8193, 'jwt-big')
    far_over = hs_token_of_length(14000, 'jwt-big')   # still under the 16 KiB request head
    check_jwt_ok(gw, mock, at_limit, 'jwt-big', 'a token of 8192 bytes')
    c = HTTPConn(gw.port)
    try:
        check_refused(gw, mock, over, 'longer than 8 KiB', '8193 bytes', conn=c)
        check_refused(gw, mock, far_over, 'longer than 8 KiB', '14000 bytes', conn=c)
        r = jwt_chat(gw, hs_token(claims('jwt-after-big')), conn=c)
        check(r.status == 200, 'the connection after an oversized token: status %d' % r.status)
    finally:
        c.close()
    # a token that overflows the request head is refused by the parser (431), and that is all
    huge = hs_token(claims('jwt-huge', pad='q' * 15000))
    r = jwt_chat(gw, huge)
    check(r.status == 431, 'a 20 KiB token: status %d, want 431' % r.status)
    check_jwt_ok(gw, mock, hs_token(claims('jwt-after-huge')), 'jwt-after-huge', 'after a 20 KiB token')


@test(ANY)
def jwt_malformed_refused(ctx):
    mock, gw = hs_pair(ctx)
    before_fail = auth_failures(gw)
    before_up = requests_seen(mock)
    payload = claims('jwt-shape')
    good = hs_token(payload)
    h, p, s = good.split('.')
    hdr = {'alg': 'HS256', 'typ': 'JWT'}
    nested = b'{"sub":"x","exp":%d,"deep":%s1%s}' % (int(time.time()) + 600, b'[' * 600, b']' * 600)
    many = b'{"sub":"x","exp":%d,%s}' % (int(time.time()) + 600,
                                         b','.join(b'"k%d":%d' % (i, i) for i in range(400)))
    dup_claim = b'{"sub":"a","exp":%d,"sub":"admin"}' % (int(time.time()) + 600)
    # a token whose signature has '-' or '_', to spell it in standard base64
    urlish = next(t for t in (hs_token(claims('jwt-shape', jti=str(i))) for i in range(500))
                  if set(t.rsplit('.', 1)[1]) & set('-_'))
    std = urlish.translate(str.maketrans('-_', '+/'))
    std = urlish.rsplit('.', 1)[0] + '.' + std.rsplit('.', 1)[1]
    three_part = [
        ('bad base64url in the header', h[:5] + '*' + h[6:] + '.' + p + '.' + s, 'header is not base64url'),
        ('bad base64url in the payload', h + '.' + p[:7] + '~' + p[8:] + '.' + s, 'payload is not base64url'),
        ('standard base64 signature', std, 'signature is not base64url'),
        ("'+' in the signature", h + '.' + p + '.+' + s[1:], 'signature is not base64url'),
        ("'=' padding on the signature", good + '=', "'=' padding"),
        ("'=' padding on the payload", h + '.' + p + '=' * (-len(p) % 4 or 4) + '.' + s, "'=' padding"),
        ('signature of 1 mod 4 characters', h + '.' + p + '.' + s[:41], 'signature is not base64url'),
        ('trailing garbage after the signature', good + '!!', 'signature is not base64url'),
        ('a space and garbage after the signature', good + ' and-more', 'signature is not base64url'),
        ('no signature', h + '.' + p + '.', 'no signature'),
        ('empty header and payload', '..' + s, 'header is not a JSON object'),
        ('header not JSON', hs_token(payload, header=b'HS256 please'), 'header is not a JSON object'),
        ('header a JSON array', hs_token(payload, header=b'["HS256"]'), 'header is not a JSON object'),
        ('header JSON and more', hs_token(payload, header=b'{"alg":"HS256"}{}'), 'header is not a JSON object'),
        ('duplicate header member', hs_token(payload, header=b'{"alg":"HS256","alg":"none"}'),
         'duplicate header member'),
        ('crit header', hs_token(payload, header={'alg': 'HS256', 'crit': ['exp']}), 'crit'),
        ('kid not a string', hs_token(payload, header={'alg': 'HS256', 'kid': 3}), 'kid is not a string'),
        ('payload not JSON', hs_token(b'sub=admin', header=hdr), 'payload is not a JSON object'),
        ('payload with a trailing comma', hs_token(b'{"sub":"a","exp":9999999999,}', header=hdr),
         'payload is not a JSON object'),
        ('duplicate claim', hs_token(dup_claim, header=hdr), 'duplicate claim'),
        ('600 nested arrays', hs_token(nested, header=hdr), 'malformed'),
        ('400 claims', hs_token(many, header=hdr), 'too many JSON values'),
        ('exp a string', hs_token(claims('jwt-shape', exp='soon')), 'exp is not a non-negative integer'),
        ('exp a float', hs_token(claims('jwt-shape', exp=int(time.time()) + 600.5)),
         'exp is not a non-negative integer'),
        ('exp negative', hs_token(claims('jwt-shape', exp=-1)), 'exp is not a non-negative integer'),
        ('exp past 2^64', hs_token(claims('jwt-shape', exp=2 ** 64)), 'exp is not a non-negative integer'),
        ('nbf a string', hs_token(claims('jwt-shape', nbf='now')), 'nbf is not a non-negative integer'),
        ('rpm negative', hs_token(claims('jwt-shape', rpm=-5)), 'rpm is not a non-negative integer'),
        ('rpm a string', hs_token(claims('jwt-shape', rpm='2')), 'rpm is not a non-negative integer'),
        ('streams true', hs_token(claims('jwt-shape', streams=True)), 'streams is not a non-negative integer'),
        ('no sub', hs_token(claims(None)), 'sub is missing'),
        ('sub a number', hs_token(claims(12345)), 'sub is not a string'),
        ('sub empty', hs_token(claims('')), 'sub is empty'),
        ('sub with a control character', hs_token(claims('jwt\u0001x')), 'control characters'),
        ('sub with an escaped newline', hs_token(claims('jwt\nx')), 'control characters'),
        ('sub of 128 bytes', hs_token(claims('s' * 128)), 'longer than 127'),
    ]
    for what, tok, want in three_part:
        check_refused(gw, mock, tok, want or 'token', what)
    # not three parts: not a JWT at all, so an unknown API key
    other = [('two parts', h + '.' + p), ('four parts', good + '.' + s), ('one part', h + p + s),
             ('a dot too many at the end', good + '.')]
    for what, tok in other:
        r = jwt_chat(gw, tok)
        check_401(r, 'invalid_api_key')
        check(tok not in r.body.decode(), '%s: the credential came back' % what)
    check(requests_seen(mock) == before_up, 'the upstream was asked %d times for malformed tokens'
          % (requests_seen(mock) - before_up))
    got = auth_failures(gw) - before_fail
    check(got == len(three_part), 'auth_failures_total{reason="invalid_token"} rose by %d, want %d'
          % (got, len(three_part)))
    check_jwt_ok(gw, mock, good, 'jwt-shape', 'the untouched token after all that')
    # a sub of 127 bytes is the longest
    check_jwt_ok(gw, mock, hs_token(claims('s' * 127)), 's' * 127, 'sub of 127 bytes')


# --- JWKS ---------------------------------------------------------------------------

@test(ANY)
def jwt_jwks_kid_selects_key(ctx):
    mock, gw = jwks_pair(ctx)
    check_jwt_ok(gw, mock, pk_token(claims('jwt-kid-two'), 'RS256', 'rsa2', kid='rsa-two'), 'jwt-kid-two',
                 'kid of the second key')
    check_jwt_ok(gw, mock, pk_token(claims('jwt-kid-one'), 'RS256', 'rsa1', kid='rsa-one'), 'jwt-kid-one',
                 'kid of the first key')
    check_jwt_ok(gw, mock, pk_token(claims('jwt-no-kid'), 'RS256', 'rsa2'), 'jwt-no-kid', 'no kid: every key tried')
    check_refused(gw, mock, pk_token(claims('jwt-kid-x'), 'RS256', 'rsa2', kid='rsa-three'), 'unknown kid',
                  'unknown kid')
    check_refused(gw, mock, pk_token(claims('jwt-kid-mix'), 'RS256', 'rsa2', kid='rsa-one'), 'bad signature',
                  'signed by key two, kid of key one')
    check_refused(gw, mock, pk_token(claims('jwt-kid-case'), 'RS256', 'rsa2', kid='RSA-TWO'), 'unknown kid',
                  'kid in another case')
    # the JWKS keys say RS256: RS384 under their kid does not fit
    check_refused(gw, mock, pk_token(claims('jwt-kid-alg'), 'RS384', 'rsa2', kid='rsa-two'),
                  'alg does not match the key named by kid', 'RS384 with the kid of an RS256 key')
    check_refused(gw, mock, pk_token(claims('jwt-kid-ec'), 'ES256', 'ec256'), 'no key on its curve',
                  'ES256 to a JWKS of RSA keys')


# --- limits from claims ---------------------------------------------------------------

@test(ANY)
def jwt_rpm_claim_429(ctx):
    mock, gw = hs_pair(ctx)
    sub = 'jwt-rpm-' + uuid.uuid4().hex[:8]
    tok = hs_token(claims(sub, rpm=2))
    c = HTTPConn(gw.port)
    try:
        for i in range(2):
            r = jwt_chat(gw, tok, conn=c)
            check(r.status == 200, 'request %d: status %d %s' % (i + 1, r.status, short(r.body)))
            h = ratelimit_headers(r)
            check(h.get('x-ratelimit-limit-requests') == '2', 'request %d: limit header %r' % (i + 1, h))
            check(h.get('x-ratelimit-remaining-requests') == str(1 - i), 'request %d: remaining %r' % (i + 1, h))
        before = requests_seen(mock)
        r = jwt_chat(gw, tok, conn=c)
        check(r.status == 429, 'third request at rpm 2: status %d %s' % (r.status, short(r.body)))
        e = check_error_shape(r.body, '429 body')
        check(e['code'] == 'rate_limit_exceeded', 'code %r' % e['code'])
        ra = r.header('retry-after')
        check(ra is not None and ra.isdigit() and 1 <= int(ra) <= 60, 'Retry-After %r, want 1..60' % ra)
        h = ratelimit_headers(r)
        check(h.get('x-ratelimit-limit-requests') == '2' and h.get('x-ratelimit-remaining-requests') == '0',
              '429 headers %r' % h)
        check(requests_seen(mock) == before, 'the upstream saw the refused request')
        # a new token for the same sub shares the count
        r = jwt_chat(gw, hs_token(claims(sub, rpm=2, iat=int(time.time()) - 1)), conn=c)
        check(r.status == 429, 'a fresh token of the same sub: status %d' % r.status)
    finally:
        c.close()
    rec = gw.wait_log(lambda x: x.get('status') == 429 and x.get('client') == sub)
    check(rec is not None, 'no log line for the 429 naming %s' % sub)
    page = get(gw.port, '/metrics').body.decode()
    check('ssegate_rate_limited_total{client="%s",limit="requests"} 2' % sub in page,
          'rate_limited_total for %s: %s' % (sub, [l for l in page.splitlines() if sub in l]))
    # another sub is not limited by it
    other = 'jwt-free-' + uuid.uuid4().hex[:8]
    r = check_jwt_ok(gw, mock, hs_token(claims(other)), other, 'another sub')
    check(not ratelimit_headers(r).get('x-ratelimit-limit-requests'), 'an unlimited sub got limit headers')


@test(ANY)
def jwt_streams_claim_429(ctx):
    mock, gw = hs_pair(ctx)
    sub = 'jwt-one-stream-' + uuid.uuid4().hex[:8]
    tok = hs_token(claims(sub, streams=1))
    CLIENT_SECRETS.add('Bearer ' + tok)
    JWT_SENT.add(tok)
    c1 = HTTPConn(gw.port)
    try:
        c1.send(build_request('POST', '/v1/chat/completions',
                              key_headers(gw.port, tok, extra=[('X-Mock-Chunks', '4'), ('X-Mock-Delay-Ms', '100')]),
                              chat_body(True)))
        h1 = c1.read_head(5)
        check(h1.status == 200, 'first stream: status %d' % h1.status)
        r = jwt_chat(gw, tok, stream=True)
        check(r.status == 429, 'second concurrent stream at streams 1: status %d' % r.status)
        check('stream' in check_error_shape(r.body)['message'], 'the 429 does not name streams')
        st = read_stream(c1, h1, 10)
        check(st.terminated, 'the first stream did not end')
    finally:
        c1.close()
    ok = wait_until(lambda: jwt_chat(gw, tok, stream=True).status == 200 or None, 3.0, step=0.05)
    check(ok, 'a new stream after the first ended was refused')


# --- keys and tokens together ---------------------------------------------------------

@test(ANY)
def jwt_and_keys_file_together(ctx):
    mock, gw = hs_pair(ctx)
    rid = 'jwt-key-' + uuid.uuid4().hex[:8]
    r = chat(gw.port, 'sk-team-a-2f9d1c7e5b', extra=[('X-Request-Id', rid)])
    check(r.status == 200, 'a keys-file key: status %d' % r.status)
    rec = gw.wait_log(lambda x: x.get('req_id') == rid)
    check(rec is not None and rec.get('client') == 'team-a', 'key client %r' % (rec or {}).get('client'))
    sub = 'jwt-beside-keys'
    check_jwt_ok(gw, mock, hs_token(claims(sub)), sub, 'a JWT beside the keys')
    # each kind of failure keeps its own code
    check_401(chat(gw.port, 'sk-not-a-client-000000'), 'invalid_api_key')
    check_refused(gw, mock, hs_token(claims(sub), key=b'wrong'), 'bad signature', 'a bad JWT beside the keys')
    # a JWT's limits do not leak onto a key, nor a key's onto a JWT
    r = chat(gw.port, 'sk-rpm-limited-77aa01')
    check(ratelimit_headers(r).get('x-ratelimit-limit-requests') == '30', 'keys-file limits %r' % ratelimit_headers(r))
    # a gateway with public keys only also takes keys from a keys file
    mock2 = ctx.env.mock(ctx.mode, 'jwt-pubkeys')
    gw2 = ctx.use(ctx.env._get(('gw', ctx.mode, 'jwt-pubkeys'), lambda: Gateway(
        ctx.env.args.gateway, 'gw-%s-jwt-pubkeys' % ctx.mode, 'http://127.0.0.1:%d/v1' % mock2.port, None,
        GW_ARGS + ['--keys-file', auth_keys_path(), '--jwt-keys-file', jwt_files()['jwks.json']])))
    check(chat(gw2.port, 'sk-team-a-2f9d1c7e5b').status == 200, 'keys-file key on a JWKS gateway')
    check_jwt_ok(gw2, mock2, pk_token(claims('jwt-jwks-keys'), 'RS256', 'rsa1', kid='rsa-one'), 'jwt-jwks-keys',
                 'RS256 on a JWKS + keys gateway')
    # without a JWT key configured, a token is only an unknown API key
    mock3, gw3 = auth_pair(ctx)
    before = requests_seen(mock3)
    check_401(jwt_chat(gw3, hs_token(claims('jwt-no-jwt-keys'))), 'invalid_api_key')
    check(requests_seen(mock3) == before, 'a keys-only gateway asked the upstream for a JWT')


# --- start-up -----------------------------------------------------------------------

@test(ANY, timeout=40)
def jwt_bad_key_files_refused(ctx):
    files = jwt_files()
    d = JWT_DIR

    def write(name, data):
        path = os.path.join(d, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path
    with open(files['rsa1.pub'], 'rb') as f:
        pub = f.read()
    secret, keys = '--jwt-secret-file', '--jwt-keys-file'
    cases = [
        ('missing secret file', secret, os.path.join(d, 'no-such-secret'), ''),
        ('empty secret file', secret, write('empty-secret', b'\n'), 'empty'),
        ('missing keys file', keys, os.path.join(d, 'no-such-keys.pem'), ''),
        ('garbage keys file', keys, write('garbage.pem', os.urandom(300) + b'\nnot a key\n'), ''),
        ('text keys file', keys, write('words.pem', b'these are not the keys\n'), ''),
        ('private key as keys file', keys, files['rsa1'], 'private'),
        ('truncated PEM', keys, write('cut.pem', pub[:120]), ''),
        ('broken JWKS', keys, write('broken.jwks', b'{"keys":[{"kty":"RSA","n":"AQAB"'), ''),
        ('JWKS without usable keys', keys, write('oct.jwks', b'{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}'), ''),
    ]
    procs = []
    for what, flag, path, want in cases:
        p = Proc('refused-jwt-' + what.replace(' ', '-'),
                 [ctx.env.args.gateway, '--listen', '127.0.0.1:0', '--upstream', 'http://127.0.0.1:9/v1', flag, path],
                 env=clean_env({'OPENAI_API_KEY': UPSTREAM_KEY}))
        procs.append((what, path, want, p))
    for what, path, want, p in procs:
        try:
            p.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            p.kill_now()
            fail('%s: the gateway started' % what)
    time.sleep(0.05)
    for what, path, want, p in procs:
        err = '\n'.join(p.err_snapshot())
        check(p.p.returncode == 2, '%s: exit %s, want 2: %s' % (what, p.p.returncode, short(err)))
        check(path in err, '%s: the message does not name %s: %s' % (what, path, short(err)))
        check(want in err, '%s: the message does not say %r: %s' % (what, want, short(err)))
        check(JWT_SECRET.decode() not in err, '%s: the secret is in the message' % what)


# --- last: no token in any log line ---------------------------------------------------

@test(ANY)
def jwt_tokens_not_logged(ctx):
    check(JWT_SENT, 'no token was sent (run the other jwt tests first)')
    bad = []
    for gw in ctx.env.gateways():
        for line in gw.proc.err_snapshot():
            for tok in JWT_SENT:
                if tok in line or tok.rsplit('.', 1)[-1] in line and len(tok.rsplit('.', 1)[-1]) >= 20:
                    bad.append((gw.name, line))
                    break
    check(not bad, '%d log lines carry a token or its signature, e.g. %s' % (len(bad), short(bad[0] if bad else None)))
