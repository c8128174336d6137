// The real OpenID provider of the integration tests: Node's oidc-provider (pinned by
// package-lock.json; `make node` installs it), configured for what Portcullis' browser sessions
// need, on 127.0.0.1 only.
//
//   node provider.mjs PORT [CONFIG]
//
// PORT 0 picks a free port. CONFIG is a JSON object, inline (starting with `{`) or the path of a
// file; every field is optional (see README.md, "Testing with a real OpenID provider"):
//
//   clients               [{ client_id, client_secret?, redirect_uris, post_logout_redirect_uris,
//                            backchannel_logout_uri, backchannel_logout_session_required (true),
//                            grant_types, response_types, access_token_format ("jwt" | "opaque"),
//                            token_endpoint_auth_method }]
//                         with a client_secret: confidential (client_secret_basic, or
//                         token_endpoint_auth_method: client_secret_post); without: public,
//                         token_endpoint_auth_method none (PKCE only).
//   access_token_ttl      seconds (default 60)       refresh_token_ttl  seconds (default 86400)
//   id_token_ttl          seconds (default 3600)     session_ttl        seconds (default 86400)
//   resource              the API's resource indicator, and the access tokens' `aud`
//                         (default "urn:portcullis:api")
//   scopes                scopes beyond openid/offline_access/profile/email the provider and the
//                         API accept (default ["api:read", "api:write"])
//   accounts              { id: { claims... } } merged over the built-in alice and bob; an
//                         unknown account id logs in too, with claims made from its id
//   default_account       who the interaction logs in when nothing says otherwise ("alice")
//   token_delay_ms        wait this long before answering each token request (default 0)
//   host                  the loopback address to listen on (default 127.0.0.1)
//
// Once listening it prints one line, `READY http://HOST:PORT` (the issuer), on stdout.
//
// Login needs no form: the authorization endpoint redirects to /interaction/UID, which logs the
// account in (the request's login_hint, else the `test_account` cookie, else the one set with
// /_test/login, else default_account) and grants every requested scope and claim at once, then
// redirects on to the client. Test hooks, answered with JSON:
//
//   GET  /_test/stats               counters (see README.md) and each back-channel logout sent
//   POST /_test/reset               zero the counters
//   POST /_test/login               {"account": "bob"} or {"deny": "access_denied"} or {}: who the
//                                   next interactions log in, or that they fail with that error
//   POST /_test/delay               {"token_ms": 500}: slow token responses from now on
//   POST /_test/backchannel_logout  {"client_id", "sub", "sid"}: sign and POST a real logout
//                                   token to that client's backchannel_logout_uri; answers
//                                   {"ok", "status", "error"}
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { promisify } from 'node:util';

// A fresh RSA key each run (ID tokens, JWT access tokens and logout tokens are RS256), made on
// the thread pool while oidc-provider loads: start-up stays well under a second.
const keyPair = promisify(crypto.generateKeyPair)('rsa', { modulusLength: 2048 });
const { default: Provider, errors } = await import('oidc-provider');

const [portArg = '0', configArg = '{}'] = process.argv.slice(2);
const config = JSON.parse(configArg.trim().startsWith('{') ? configArg : fs.readFileSync(configArg, 'utf8'));
// Another loopback address (e.g. 127.0.0.2) keeps the provider's cookies apart from those of
// the servers on 127.0.0.1, as a provider on a host of its own would.
const HOST = config.host ?? '127.0.0.1';
if (!/^127\.\d+\.\d+\.\d+$/.test(HOST)) throw new Error(`host ${HOST}: loopback (127.0.0.0/8) only`);

const RESOURCE = config.resource ?? 'urn:portcullis:api';
const API_SCOPES = config.scopes ?? ['api:read', 'api:write'];
const OIDC_SCOPES = ['openid', 'offline_access', 'profile', 'email'];
const ALL_SCOPES = [...OIDC_SCOPES, ...API_SCOPES];

const ACCOUNTS = {
  alice: {
    email: 'alice@example.test', email_verified: true, name: 'Alice Liddell', given_name: 'Alice', family_name: 'Liddell', groups: ['staff', 'admins'],
  },
  bob: {
    email: 'bob@example.test', email_verified: true, name: 'Bob Builder', given_name: 'Bob', family_name: 'Builder', groups: ['staff'],
  },
};
for (const [id, claims] of Object.entries(config.accounts ?? {})) {
  ACCOUNTS[id] = { ...ACCOUNTS[id], ...claims };
}
const STANDARD_CLAIMS = ['sub', 'email', 'email_verified', 'name', 'given_name', 'family_name', 'groups'];
// Claims the config's accounts add (e.g. `roles`): released with the profile scope.
const EXTRA_CLAIMS = [...new Set(Object.values(ACCOUNTS).flatMap(Object.keys))]
  .filter((c) => !STANDARD_CLAIMS.includes(c));

function accountClaims(id) {
  return {
    email: `${id}@example.test`, email_verified: true, name: id, groups: [], ...ACCOUNTS[id], sub: id,
  };
}

// What the tests read at /_test/stats.
function freshStats() {
  return {
    authorizations: 0,
    logins: 0,
    denied: 0,
    code_grants: 0,
    refresh_grants: 0,
    refresh_invalid_grant: 0,
    refresh_reuse_detected: 0,
    client_credentials_grants: 0,
    token_errors: 0,
    grants_revoked: 0,
    revocations: 0,
    introspections: 0,
    introspections_active: 0,
    userinfo: 0,
    end_session: 0,
    backchannel_logouts: [],
  };
}
let stats = freshStats();
// Set by /_test/login and /_test/delay.
const hooks = { account: undefined, deny: undefined, tokenDelayMs: config.token_delay_ms ?? 0 };
// The back-channel logout in flight, so that the fetch below can record its answer.
const backchannelResults = new Map();

const clients = (config.clients ?? []).map((c) => {
  const confidential = typeof c.client_secret === 'string';
  const out = {
    client_id: c.client_id,
    redirect_uris: c.redirect_uris ?? [],
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    grant_types: c.grant_types ?? ['authorization_code', 'refresh_token'],
    response_types: c.response_types ?? ((c.grant_types ?? ['authorization_code']).includes('authorization_code') ? ['code'] : []),
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? (confidential ? 'client_secret_basic' : 'none'),
    access_token_format: c.access_token_format ?? 'jwt',
  };
  if (confidential) out.client_secret = c.client_secret;
  if (c.backchannel_logout_uri) {
    out.backchannel_logout_uri = c.backchannel_logout_uri;
    out.backchannel_logout_session_required = c.backchannel_logout_session_required ?? true;
  }
  return out;
});

const { privateKey } = await keyPair;
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };

const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body>${body}</body></html>`;
const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function configuration() {
  return {
    clients,
    extraClientMetadata: {
      properties: ['access_token_format'],
      validator(_ctx, key, value) {
        if (key === 'access_token_format' && !['jwt', 'opaque'].includes(value)) {
          throw new errors.InvalidClientMetadata('access_token_format must be jwt or opaque');
        }
      },
    },
    jwks: { keys: [signingKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ALL_SCOPES,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'given_name', 'family_name', 'groups', ...EXTRA_CLAIMS],
    },
    // Scope claims in the ID token itself, as most providers do, not only at userinfo.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    rotateRefreshToken: true,
    // Refresh tokens whenever the client may use them and offline_access was granted (the
    // authorization request gets prompt=consent added for it, see below).
    issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    ttl: {
      AccessToken: config.access_token_ttl ?? 60,
      ClientCredentials: config.access_token_ttl ?? 60,
      AuthorizationCode: 60,
      IdToken: config.id_token_ttl ?? 3600,
      RefreshToken: config.refresh_token_ttl ?? 86400,
      Interaction: 600,
      Session: config.session_ttl ?? 86400,
      Grant: config.refresh_token_ttl ?? 86400,
    },
    // Every access token for the API: signed JWTs (verifiable with the JWKS) for most clients,
    // opaque (introspection only) for a client with access_token_format "opaque".
    features: {
      devInteractions: { enabled: false },
      introspection: { enabled: true },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        // No confirmation to click: the form submits itself (a browser runs the script; the
        // tests' cookie-jar client submits such forms itself).
        logoutSource: async (ctx, form) => {
          ctx.body = page('Signing out', form.replace('</form>', '<input type="hidden" name="logout" value="yes"/></form>')
            + '<script>document.forms[0].submit()</script>');
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.body = page('Signed out', '<h1 id="signed-out">Signed out</h1>');
        },
      },
      backchannelLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator, client) => {
          if (indicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: ALL_SCOPES.join(' '),
            audience: RESOURCE,
            accessTokenFormat: client.access_token_format ?? 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    // The account's claims, its session id and the client in JWT access tokens (and in
    // introspection answers for opaque ones), so that policies can use them as with the ID token.
    extraTokenClaims: async (_ctx, token) => {
      if (!token.accountId) return undefined;
      const { sub, ...claims } = accountClaims(token.accountId);
      void sub;
      return { ...claims, ...(token.sid ? { sid: token.sid } : {}) };
    },
    findAccount: async (_ctx, id) => ({
      accountId: id,
      claims: async () => accountClaims(id),
    }),
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1 id="error">${escape(out.error)}</h1><p id="error_description">${escape(out.error_description ?? '')}</p>`);
    },
    // Its SSRF guard refuses loopback addresses, where every test listener is: send the
    // (back-channel logout) requests with plain fetch, without its dispatcher, and record each.
    fetch: async (url, options) => {
      const { dispatcher, ...rest } = options;
      void dispatcher;
      const record = { url: String(url), ok: false, status: null, error: null };
      try {
        const response = await fetch(url, rest);
        record.status = response.status;
        record.ok = response.status === 200 || response.status === 204;
        return response;
      } catch (err) {
        record.error = String(err?.message ?? err);
        throw err;
      } finally {
        const pending = backchannelResults.get(String(url));
        if (pending) pending.push(record);
      }
    },
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch (err) {
        reject(err);
      }
    });
    req.on('error', reject);
  });
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

function cookie(req, name) {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return undefined;
}

async function sendBackchannelLogout(op, { client_id: clientId, sub, sid }) {
  const client = await op.Client.find(clientId);
  if (!client?.backchannelLogoutUri) {
    return { ok: false, status: null, error: `client ${clientId} has no backchannel_logout_uri` };
  }
  const url = new URL(client.backchannelLogoutUri).href;
  const records = [];
  backchannelResults.set(url, records);
  let error = null;
  try {
    await client.backchannelLogout(sub, sid);
  } catch (err) {
    error = String(err?.message ?? err);
  } finally {
    backchannelResults.delete(url);
  }
  const sent = records[0] ?? { url, ok: false, status: null, error };
  const entry = {
    client_id: clientId, sub, sid: sid ?? null, url, ok: error === null && sent.ok, status: sent.status, error: error ?? sent.error,
  };
  stats.backchannel_logouts.push(entry);
  return entry;
}

// The interaction without a form: log the account in and grant everything asked for, at once.
async function interaction(op, req, res) {
  const details = await op.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (hooks.deny) {
    stats.denied += 1;
    await op.interactionFinished(req, res, { error: hooks.deny, error_description: 'the test provider was told to refuse this login' }, { mergeWithLastSubmission: false });
    return;
  }
  const result = {};
  let accountId = session?.accountId;
  if (prompt.name === 'login' || !accountId) {
    accountId = params.login_hint || cookie(req, 'test_account') || hooks.account || config.default_account || 'alice';
    result.login = { accountId };
    stats.logins += 1;
  }
  let grant = details.grantId ? await op.Grant.find(details.grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new op.Grant({ accountId, clientId: params.client_id });
  }
  const requested = String(params.scope ?? 'openid').split(' ').filter(Boolean);
  // The API's scopes are declared to the provider too (so discovery lists them): they are
  // granted as OpenID scopes as well as for the resource.
  const known = requested.filter((s) => ALL_SCOPES.includes(s)).join(' ');
  grant.addOIDCScope(known);
  if (params.claims) {
    const claims = JSON.parse(params.claims);
    grant.addOIDCClaims([...Object.keys(claims.id_token ?? {}), ...Object.keys(claims.userinfo ?? {})]);
  }
  const resources = params.resource ? [].concat(params.resource) : [RESOURCE];
  for (const resource of resources) {
    grant.addResourceScope(resource, known);
  }
  result.consent = { grantId: await grant.save() };
  await op.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function testHook(op, req, res, path) {
  if (req.method === 'GET' && path === '/_test/stats') return json(res, 200, stats);
  if (req.method !== 'POST') return json(res, 405, { error: 'POST' });
  const body = await readBody(req);
  switch (path) {
    case '/_test/reset':
      stats = freshStats();
      return json(res, 200, stats);
    case '/_test/login':
      hooks.account = body.account;
      hooks.deny = body.deny;
      return json(res, 200, { account: hooks.account ?? null, deny: hooks.deny ?? null });
    case '/_test/delay':
      hooks.tokenDelayMs = Number(body.token_ms ?? 0);
      return json(res, 200, { token_ms: hooks.tokenDelayMs });
    case '/_test/backchannel_logout':
      return json(res, 200, await sendBackchannelLogout(op, body));
    default:
      return json(res, 404, { error: `no test hook ${path}` });
  }
}

// Counts what each endpoint answered, and applies the token delay.
function counters(op) {
  op.on('grant.success', (ctx) => {
    const gty = ctx.oidc.params.grant_type;
    if (gty === 'authorization_code') stats.code_grants += 1;
    else if (gty === 'refresh_token') stats.refresh_grants += 1;
    else if (gty === 'client_credentials') stats.client_credentials_grants += 1;
  });
  op.on('grant.error', (ctx, err) => {
    stats.token_errors += 1;
    if (ctx.oidc?.params?.grant_type === 'refresh_token' && err.error === 'invalid_grant') {
      stats.refresh_invalid_grant += 1;
      if (err.error_detail === 'refresh token already used') stats.refresh_reuse_detected += 1;
    }
  });
  op.on('grant.revoked', () => { stats.grants_revoked += 1; });
  op.on('end_session.success', () => { stats.end_session += 1; });
  op.on('backchannel.success', (_ctx, client, sub, sid) => {
    stats.backchannel_logouts.push({
      client_id: client.clientId, sub, sid: sid ?? null, url: client.backchannelLogoutUri, ok: true, status: 200, error: null,
    });
  });
  op.on('backchannel.error', (_ctx, err, client, sub, sid) => {
    stats.backchannel_logouts.push({
      client_id: client.clientId, sub, sid: sid ?? null, url: client.backchannelLogoutUri, ok: false, status: err.response?.status ?? null, error: String(err.message),
    });
  });
  op.use(async (ctx, next) => {
    if (ctx.path === '/token' && ctx.method === 'POST' && hooks.tokenDelayMs > 0) {
      await new Promise((r) => { setTimeout(r, hooks.tokenDelayMs); });
    }
    await next();
    const route = ctx.oidc?.route;
    if (route === 'authorization') stats.authorizations += 1;
    else if (route === 'introspection' && ctx.status === 200) {
      stats.introspections += 1;
      if (ctx.body?.active) stats.introspections_active += 1;
    } else if (route === 'revocation' && ctx.status === 200) stats.revocations += 1;
    else if (route === 'userinfo' && ctx.status === 200) stats.userinfo += 1;
  });
  // Refresh tokens need offline_access, which the OpenID spec honours only with prompt=consent;
  // the interaction grants consent without a form, so ask for it on the client's behalf.
  op.use(async (ctx, next) => {
    if (ctx.path === '/auth' && ctx.method === 'GET') {
      const scope = String(ctx.query.scope ?? '').split(' ');
      const prompt = String(ctx.query.prompt ?? '').split(' ').filter(Boolean);
      if (scope.includes('offline_access') && !prompt.includes('consent')) {
        ctx.query = { ...ctx.query, prompt: [...prompt, 'consent'].join(' ') };
      }
    }
    await next();
  });
}

const server = http.createServer();
server.listen(Number(portArg), HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  const op = new Provider(issuer, configuration());
  // `sid` in every ID token (and code, hence refresh and access tokens), as Keycloak, Okta and
  // Auth0 do, not only for clients registered for back-channel logout with
  // backchannel_logout_session_required.
  op.Client.prototype.includeSid = () => true;
  counters(op);
  const callback = op.callback();
  server.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    let handled;
    if (path.startsWith('/_test/')) handled = testHook(op, req, res, path);
    else if (req.method === 'GET' && path.startsWith('/interaction/')) handled = interaction(op, req, res);
    else return callback(req, res);
    handled.catch((err) => {
      if (!res.headersSent) json(res, 500, { error: String(err?.message ?? err) });
      else res.end();
    });
    return undefined;
  });
  process.stdout.write(`READY ${issuer}\n`);
});

// The test that started it is gone: stop too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
