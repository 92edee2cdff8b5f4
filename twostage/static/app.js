// The twostage search page: plain DOM, no dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SNIPPET_CHARS = 280;
// a MaxSim-aligned passage word is marked when its token is at least this similar to a query word's
const MARK_SIMILARITY = 0.6;
const TIMEOUT_MS = 30000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;  // never innerHTML: documents are untrusted text
  return node;
}

function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  box.hidden = !text;
}

function setStatus(text, ok) {
  const status = $("server-status");
  status.textContent = text;
  status.className = "status " + (ok ? "ok" : "bad");
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

class ServerError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// fetch + JSON; throws ServerError for an error reply, TypeError/AbortError when the server cannot be reached
async function call(path, options) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { ...options, headers: headers(), signal: controller.signal });
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.statusText || "no details";
    throw new ServerError(response.status, reason);
  }
  return body;
}

function describeFailure(err) {
  if (err instanceof ServerError) {
    if (err.status === 401 || err.status === 403) {
      $("token-box").open = true;
      return `The server refused the request (${err.status}): ${err.message}. Enter the token above.`;
    }
    return `The server returned an error (${err.status}): ${err.message}`;
  }
  if (err && err.name === "AbortError") {
    return "The server did not answer within " + TIMEOUT_MS / 1000 + " s. Try again, or with a smaller k.";
  }
  return `Cannot reach the server at ${location.origin}: it is unreachable or stopped. ` +
         "Check that 'twostage serve' is running, then try again.";
}

async function checkHealth() {
  try {
    const health = await call("/health", { method: "GET" });
    const mode = health.read_only ? "read-only" : "writes need a token";
    setStatus(`connected · ${health.documents} documents · ${mode}`, true);
    $("k").value = health.defaults.k;
    $("top-n").value = health.defaults.top_n;
    $("rerank").checked = health.defaults.rerank;
    const stage = $("first-stage");
    if (![...stage.options].some((o) => o.value === health.defaults.first_stage)) {
      stage.appendChild(el("option", null, health.defaults.first_stage)).value = health.defaults.first_stage;
    }
    stage.value = health.defaults.first_stage;
    $("k").max = health.limits.max_k;
    $("top-n").max = health.limits.max_top_n;
    $("query").maxLength = health.limits.max_query_chars;
    if (health.reads_protected) $("token-box").open = true;
  } catch (err) {
    setStatus("server unreachable", false);
    showMessage(describeFailure(err));
  }
}

function ms(seconds) { return (seconds * 1000).toFixed(1) + " ms"; }

function renderHit(hit, query) {
  const li = el("li", "hit");
  li.dataset.docId = hit.doc_id;
  li.appendChild(el("div", "rank", String(hit.rank)));
  const body = el("div", "body");
  const head = el("div", "head");
  head.appendChild(el("span", "title", hit.title || hit.doc_id));
  head.appendChild(el("span", "doc-id", hit.doc_id));
  body.appendChild(head);
  const where = placeOf(hit.passage);
  if (where) body.appendChild(el("div", "where", where));
  body.appendChild(passageView(hit, query));
  const scores = el("div", "scores");
  if (hit.rerank_score !== null) {
    scores.appendChild(el("span", "rerank-score", `rerank score ${hit.rerank_score.toFixed(3)} (rank ${hit.rerank_rank})`));
  }
  scores.appendChild(el("span", "retrieval-score",
    `first-stage score ${hit.retrieval_score.toFixed(3)} (rank ${hit.retrieval_rank})`));
  if (hit.rerank_rank !== null && hit.rerank_rank !== hit.retrieval_rank) {
    const up = hit.rerank_rank < hit.retrieval_rank;
    scores.appendChild(el("span", up ? "moved-up" : "moved-down",
      (up ? "▲ " : "▼ ") + Math.abs(hit.retrieval_rank - hit.rerank_rank)));
  }
  body.appendChild(scores);
  li.appendChild(body);
  return li;
}

// Where the passage that matched lies in its document: "passage 3 of 12 · page 4 · Install › From source".
function placeOf(passage) {
  if (!passage) return "";
  const parts = passage.count > 1 ? [`passage ${passage.number + 1} of ${passage.count}`] : [];
  if (passage.page !== null) parts.push(`page ${passage.page}`);
  if (passage.headings.length) parts.push(passage.headings.join(" › "));
  return parts.join(" · ");
}

const STOPWORDS = new Set("a an and are as at be but by for if in into is it no not of on or such that the their then there these they this to was will with how what when where which who why do does".split(" "));

// Without explain: the words of the text that begin with a query word's stem (its first letters, suffixes off).
function queryWordSpans(text, query) {
  const stems = query.toLowerCase().match(/[\p{L}\p{N}]+/gu)?.filter((w) => !STOPWORDS.has(w))
    .map((w) => w.replace(/(ations|ation|ings|ing|ies|es|ed|s)$/, "") || w) || [];
  const spans = [];
  for (const m of text.matchAll(/[\p{L}\p{N}]+/gu)) {
    const word = m[0].toLowerCase();
    if (stems.some((s) => (s.length >= 3 ? word.startsWith(s) : word === s))) spans.push([m.index, m.index + m[0].length]);
  }
  return spans;
}

// The words that matched, as [start, end) offsets into the text: with explain, BM25's terms and MaxSim's closely
// aligned words; without, the query's words.
function matchedSpans(hit, query) {
  const explain = hit.passage && hit.passage.explain;
  if (!explain) return queryWordSpans(hit.text, query);
  const spans = [];
  for (const term of explain.bm25 || []) for (const w of term.words) spans.push([w.start, w.end]);
  for (const m of explain.maxsim || []) {
    if (m.start !== null && m.similarity >= MARK_SIMILARITY) spans.push([m.start, m.end]);
  }
  spans.sort((a, b) => a[0] - b[0] || b[1] - a[1]);
  return spans;
}

// The passage in context: a window of it around its first match, each matched word in a <mark>.
function passageView(hit, query) {
  const text = hit.text;
  const spans = matchedSpans(hit, query);
  let from = 0;
  let to = text.length;
  if (text.length > SNIPPET_CHARS) {
    const first = spans.length ? spans[0][0] : 0;
    from = first > SNIPPET_CHARS / 3 ? text.lastIndexOf(" ", first - SNIPPET_CHARS / 4) + 1 : 0;
    to = Math.min(text.length, from + SNIPPET_CHARS);
  }
  const p = el("p", "snippet");
  const before = from > 0 || (hit.passage && hit.passage.number > 0);
  const after = to < text.length || (hit.passage && hit.passage.number + 1 < hit.passage.count);
  if (before) p.append("…");
  let at = from;
  for (const [start, end] of spans) {
    if (start < at || end > to) continue;
    p.append(text.slice(at, start));
    p.appendChild(el("mark", null, text.slice(start, end)));
    at = end;
  }
  p.append(text.slice(at, to));
  if (after) p.append("…");
  return p;
}

function render(result) {
  const list = $("results");
  list.replaceChildren(...result.hits.map((hit) => renderHit(hit, result.query)));
  const t = result.timings;
  const summary = $("summary");
  const stage = result.reranker ? `reranked by ${result.reranker}` : "first stage only";
  const line = el("div", "counts",
    `${result.hits.length} results from ${result.candidates} candidates (k=${result.k}), ${stage}; ` +
    `first stage ${result.first_stage}`);
  const timings = el("div", "timings");
  timings.appendChild(el("span", "t-encode", "encode " + ms(t.encode_s)));
  timings.appendChild(el("span", "t-search", "search " + ms(t.search_s)));
  timings.appendChild(el("span", "t-rerank", "rerank " + ms(t.rerank_s)));
  timings.appendChild(el("span", "t-total", "total " + ms(t.total_s)));
  timings.appendChild(el("span", "t-server", "in server " + result.latency_ms.toFixed(1) + " ms"));
  summary.replaceChildren(line, timings);
  summary.hidden = false;
  const notes = [...result.notices];
  if (!result.hits.length) notes.unshift("No results.");
  showMessage(notes.join(" "), "info");
}

let latest = 0;
async function search() {
  const query = $("query").value.trim();
  if (!query) { showMessage("Type some words to search for.", "info"); return; }
  const ticket = ++latest;
  $("search-button").disabled = true;
  try {
    const body = {
      query,
      k: parseInt($("k").value, 10) || undefined,
      top_n: parseInt($("top-n").value, 10) || undefined,
      rerank: $("rerank").checked,
      first_stage: $("first-stage").value,
      explain: $("explain").checked,
    };
    const result = await call("/search", { method: "POST", body: JSON.stringify(body) });
    if (ticket !== latest) return;  // a newer search already answered
    render(result);
    if ($("server-status").classList.contains("bad")) checkHealth();
  } catch (err) {
    if (ticket !== latest) return;
    $("results").replaceChildren();
    $("summary").hidden = true;
    if (!(err instanceof ServerError)) setStatus("server unreachable", false);
    showMessage(describeFailure(err));
  } finally {
    if (ticket === latest) $("search-button").disabled = false;
  }
}

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
for (const id of ["first-stage", "rerank", "k", "top-n", "explain"]) {
  $(id).addEventListener("change", () => { if ($("query").value.trim()) search(); });
}
checkHealth();
