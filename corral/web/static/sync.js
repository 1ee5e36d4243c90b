// Corral's sync client: the Convex sync protocol over one WebSocket (/api/sync), no dependencies.
//
//   const client = new SyncClient("http://127.0.0.1:3210");
//   client.setAuth(async (forceRefresh) => token | null);      // called again before the token expires
//   const stop = client.subscribe("corral/workspaces:list", {}, (value) => …, (error) => …);
//   await client.mutation("corral/workspaces:create", {name: "Research"});
//   await client.action("corral/sandbox_runs:start", {workspace_id, thread_id});
//
// A mutation's promise resolves once the Transition that shows its write has arrived, so a page
// that awaits it already sees its own change. Errors are ServerError: `.data` holds a
// ConvexError's {code, message}. The socket reconnects by itself and replays the query set and the
// mutations not yet answered (the server deduplicates them by session and request id).

export class ServerError extends Error {
  constructor(message, data) {
    super(data && typeof data === "object" && data.message ? data.message : message);
    this.name = "ServerError";
    this.data = data ?? null;
  }
}

const REFRESH_AHEAD_MS = 60_000; // ask for a new token this long before the current one expires
const MAX_BACKOFF_MS = 5_000;

function decodeValue(value) {
  if (Array.isArray(value)) return value.map(decodeValue);
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$integer") {
      const bytes = Uint8Array.from(atob(value.$integer), (c) => c.charCodeAt(0));
      return Number(new DataView(bytes.buffer).getBigInt64(0, true));
    }
    if (keys.length === 1 && keys[0] === "$bytes") return Uint8Array.from(atob(value.$bytes), (c) => c.charCodeAt(0));
    if (keys.length === 1 && keys[0] === "$float") {
      const bytes = Uint8Array.from(atob(value.$float), (c) => c.charCodeAt(0));
      return new DataView(bytes.buffer).getFloat64(0, true);
    }
    const out = {};
    for (const k of keys) out[k] = decodeValue(value[k]);
    return out;
  }
  return value;
}

function tsValue(encoded) {
  if (encoded === null || encoded === undefined) return 0n;
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  return new DataView(bytes.buffer).getBigUint64(0, true);
}

function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).exp * 1000;
  } catch {
    return null;
  }
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class SyncClient {
  constructor(url, { onConnectionChange = () => {}, onAuthChange = () => {} } = {}) {
    this.wsUrl = url.replace(/^http/, "ws").replace(/\/$/, "") + "/api/sync";
    this.onConnectionChange = onConnectionChange;
    this.onAuthChange = onAuthChange;
    this.sessionId = uuid();
    this.connectionCount = 0;
    this.lastCloseReason = "InitialConnect";
    this.queries = new Map(); // queryId -> {path, args, key, value, error, listeners:Set}
    this.byKey = new Map(); // path+args -> queryId
    this.nextQueryId = 0;
    this.nextRequestId = 0;
    this.requests = new Map(); // requestId -> {message, resolve, reject, kind, ts}
    this.fetchToken = null;
    this.token = null;
    this.refreshTimer = null;
    this.backoff = 100;
    this.closed = false;
    this.connected = false;
    this._connect();
  }

  // -- queries
  subscribe(path, args, onUpdate, onError = () => {}) {
    const key = path + "\u0000" + JSON.stringify(args ?? {});
    let queryId = this.byKey.get(key);
    let query = queryId === undefined ? null : this.queries.get(queryId);
    if (!query) {
      queryId = this.nextQueryId++;
      query = { path, args: args ?? {}, key, value: undefined, error: null, loaded: false, listeners: new Set() };
      this.queries.set(queryId, query);
      this.byKey.set(key, queryId);
      this._modify([{ type: "Add", queryId, udfPath: path, args: [query.args] }]);
    }
    const listener = { onUpdate, onError };
    query.listeners.add(listener);
    if (query.loaded) queueMicrotask(() => (query.error ? onError(query.error) : onUpdate(query.value)));
    return () => {
      query.listeners.delete(listener);
      if (query.listeners.size === 0 && this.queries.get(queryId) === query) {
        this.queries.delete(queryId);
        this.byKey.delete(key);
        this._modify([{ type: "Remove", queryId }]);
      }
    };
  }

  _modify(modifications) {
    if (!this.connected) return; // sent as a whole on (re)connect
    const base = this.querySetVersion;
    this.querySetVersion = base + 1;
    this._send({ type: "ModifyQuerySet", baseVersion: base, newVersion: base + 1, modifications });
  }

  // -- mutations and actions
  mutation(path, args = {}) { return this._request("Mutation", path, args); }
  action(path, args = {}) { return this._request("Action", path, args); }

  _request(type, path, args) {
    const requestId = this.nextRequestId++;
    const message = { type, requestId, udfPath: path, args: [args] };
    return new Promise((resolve, reject) => {
      this.requests.set(requestId, { message, resolve, reject, kind: type, ts: null, result: undefined });
      if (this.connected) this._send(message);
    });
  }

  // -- auth
  setAuth(fetchToken) {
    this.fetchToken = fetchToken;
    this._authenticate(false);
  }

  clearAuth() {
    this.fetchToken = null;
    this.token = null;
    clearTimeout(this.refreshTimer);
    if (this.connected) this._sendAuth(null);
  }

  async _authenticate(forceRefresh) {
    if (!this.fetchToken) return;
    let token = null;
    try {
      token = await this.fetchToken(forceRefresh);
    } catch {
      token = null;
    }
    if (!this.fetchToken) return;
    if (!token) {
      this.token = null;
      this.onAuthChange(false);
      if (this.connected) this._sendAuth(null);
      return;
    }
    this.token = token;
    if (this.connected) this._sendAuth(token);
    this._scheduleRefresh(token);
  }

  _scheduleRefresh(token) {
    clearTimeout(this.refreshTimer);
    const expiry = tokenExpiry(token);
    if (!expiry) return;
    const delay = Math.max(1_000, expiry - Date.now() - REFRESH_AHEAD_MS);
    this.refreshTimer = setTimeout(() => this._authenticate(true), delay);
  }

  _sendAuth(token) {
    const base = this.identityVersion;
    this.identityVersion = base + 1;
    this.authPending = token !== null;
    this._send(token === null
      ? { type: "Authenticate", baseVersion: base, tokenType: "None" }
      : { type: "Authenticate", baseVersion: base, tokenType: "User", value: token });
  }

  // -- the socket
  _connect() {
    if (this.closed) return;
    const ws = new WebSocket(this.wsUrl);
    this.ws = ws;
    ws.onopen = () => {
      this.connected = true;
      this.backoff = 100;
      this.querySetVersion = 0;
      this.identityVersion = 0;
      this.version = { querySet: 0, identity: 0, ts: 0n };
      this._send({ type: "Connect", sessionId: this.sessionId, connectionCount: this.connectionCount++,
                   lastCloseReason: this.lastCloseReason, clientTs: Date.now() });
      if (this.token) this._sendAuth(this.token);
      const adds = [...this.queries].map(([queryId, q]) => ({ type: "Add", queryId, udfPath: q.path, args: [q.args] }));
      if (adds.length) this._modify(adds);
      for (const [requestId, request] of this.requests) {
        if (request.kind === "Action" && request.sent) {
          this.requests.delete(requestId);
          request.reject(new ServerError("the connection was lost while the action ran; it may or may not have finished"));
        } else if (request.ts === null) {
          this._send(request.message);
        }
      }
      this.onConnectionChange(true);
    };
    ws.onmessage = (event) => this._receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      const was = this.connected;
      this.connected = false;
      this.lastCloseReason = event.reason || `closed (${event.code})`;
      if (was) this.onConnectionChange(false);
      if (this.closed) return;
      setTimeout(() => this._connect(), this.backoff);
      this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
    };
  }

  _send(message) {
    if (message.type === "Action") {
      const request = this.requests.get(message.requestId);
      if (request) request.sent = true;
    }
    this.ws.send(JSON.stringify(message));
  }

  _receive(message) {
    switch (message.type) {
      case "Transition": return this._transition(message);
      case "MutationResponse": return this._mutationResponse(message);
      case "ActionResponse": return this._actionResponse(message);
      case "AuthError":
        this.identityVersion = message.baseVersion;
        if (message.authUpdateAttempted) {
          // the token was refused: one fresh token, or the page learns it is signed out
          if (this.authRetried) { this.authRetried = false; this.token = null; this.onAuthChange(false); return; }
          this.authRetried = true;
          this._authenticate(true);
        } else {
          this.token = null; // the socket closes; it reconnects with a fresh token
          this._authenticate(true);
        }
        return;
      case "FatalError":
        console.error("corral sync:", message.error);
        return;
      default:
        return; // Ping and anything newer
    }
  }

  _transition(message) {
    const end = message.endVersion;
    if (end.identity > message.startVersion.identity && this.authPending) {
      this.authPending = false;
      this.authRetried = false;
      this.onAuthChange(true);
    }
    this.version = { querySet: end.querySet, identity: end.identity, ts: tsValue(end.ts) };
    for (const mod of message.modifications) {
      const query = this.queries.get(mod.queryId);
      if (!query) continue;
      if (mod.type === "QueryUpdated") {
        query.value = decodeValue(mod.value);
        query.error = null;
        query.loaded = true;
        for (const l of query.listeners) l.onUpdate(query.value);
      } else if (mod.type === "QueryFailed") {
        query.error = new ServerError(mod.errorMessage, mod.errorData ? decodeValue(mod.errorData) : null);
        query.loaded = true;
        for (const l of query.listeners) l.onError(query.error);
      }
    }
    for (const [requestId, request] of this.requests) {
      if (request.ts !== null && request.ts <= this.version.ts) {
        this.requests.delete(requestId);
        request.resolve(request.result);
      }
    }
  }

  _mutationResponse(message) {
    const request = this.requests.get(message.requestId);
    if (!request) return;
    if (!message.success) {
      this.requests.delete(message.requestId);
      request.reject(new ServerError(message.result, message.errorData ? decodeValue(message.errorData) : null));
      return;
    }
    request.result = decodeValue(message.result);
    request.ts = tsValue(message.ts);
    if (request.ts <= this.version.ts) {
      this.requests.delete(message.requestId);
      request.resolve(request.result);
    }
  }

  _actionResponse(message) {
    const request = this.requests.get(message.requestId);
    if (!request) return;
    this.requests.delete(message.requestId);
    if (message.success) request.resolve(decodeValue(message.result));
    else request.reject(new ServerError(message.result, message.errorData ? decodeValue(message.errorData) : null));
  }

  close() {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    this.ws?.close();
  }
}
