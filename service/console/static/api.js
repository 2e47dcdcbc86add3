// The JSON API client: the same routes and bearer tokens as every other client.
// The token lives in sessionStorage (this tab only, gone when it closes), never in a URL.

const KEY = "greenroom.token";

export class ApiError extends Error {
  constructor(status, message, detail) {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

export function authHeaders() {
  const token = session.token;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json", ...authHeaders() };
  const init = { method, headers, cache: "no-store" };
  if (body instanceof Blob) {  // a file, sent as it is (the upload route takes a raw body)
    headers["Content-Type"] = rawType(body.name || "");
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) {
    const message = (data && data.message) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message, data && data.detail);
  }
  return data;
}

function rawType(name) {
  if (/\.zip$/i.test(name)) return "application/zip";
  if (/\.(tar\.gz|tgz)$/i.test(name)) return "application/gzip";
  return "application/octet-stream";
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);

export async function login(username, password) {
  const data = await post("/api/v2/auth/login", { username, password });
  session.set(data.access_token);
  return data.user;
}

// A model reference in a path: `owner/name` keeps its slash, each part escaped.
export const ref = (identifier) => identifier.split("/").map(encodeURIComponent).join("/");
