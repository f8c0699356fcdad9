// Requests to the eeipu API. The token (if the user gave one) is kept for this tab only
// (sessionStorage) and sent as "Authorization: Bearer <token>", as the API expects; reads
// work without it, stop/resume need it when the server has one.

const KEY = "eeipu-token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function request(method, path) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const r = await fetch(path, { method, headers });
  if (!r.ok) {
    let body = {};
    try { body = await r.json(); } catch (e) { body = {}; }
    throw new ApiError(r.status, body.error || "http_error", body.message || r.statusText);
  }
  return r.status === 204 ? null : r.json();
}

export const get = (path) => request("GET", path);
export const post = (path) => request("POST", path);
