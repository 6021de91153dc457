// modalrec web page: plain fetch calls against the JSON API of the served run.
"use strict";

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];
const $ = (id) => document.getElementById(id);
const state = { info: null, colors: {}, similarItem: null };

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ message: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.message || `HTTP ${res.status}`);
  return body;
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function itemLabel(entry) {
  return entry.title ? entry.title : `item ${entry.item}`;
}

function itemLink(entry) {
  return el("a", { href: "#", class: "item-link", title: "Show similar items", onclick: (e) => {
    e.preventDefault();
    loadSimilar(entry.item);
  } }, itemLabel(entry));
}

function colorFor(part) {
  if (!(part in state.colors)) {
    state.colors[part] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
  }
  return state.colors[part];
}

function renderLegend(parts) {
  const legend = $("legend");
  legend.replaceChildren(...parts.map((p) =>
    el("span", { class: "legend-item" }, el("i", { style: `background:${colorFor(p)}` }), p)));
}

function modalityBars(weights) {
  const box = el("div", { class: "bars" });
  for (const [part, w] of Object.entries(weights)) {
    const pct = Math.max(0, Math.min(1, w)) * 100;
    box.append(el("div", { class: "bar-row", title: `${part}: ${w.toFixed(3)}` },
      el("span", { class: "bar-label", text: part }),
      el("span", { class: "bar-track" },
        el("span", { class: "bar", style: `width:${pct.toFixed(1)}%;background:${colorFor(part)}` })),
      el("span", { class: "bar-value", text: w.toFixed(2) })));
  }
  return box;
}

function renderRecs(body, title) {
  $("recs-title").textContent = title;
  const expl = body.explanation;
  const hasWeights = expl && expl.kind;
  renderLegend(hasWeights ? expl.parts : []);
  let note = hasWeights ? `Bars: ${expl.kind} weight of each part in the item's score.` : (expl && expl.note) || "";
  if (body.fold_in) note = `Fold-in: ${body.fold_in.method}. ` + note;
  $("recs-note").textContent = note;
  const list = $("recs");
  list.replaceChildren(...body.items.map((it) => el("li", { class: "rec", "data-item": it.item },
    el("div", { class: "rec-main" },
      el("span", { class: "rank", text: `${it.rank}` }),
      el("div", { class: "rec-text" }, itemLink(it),
        el("div", { class: "meta", text: `#${it.item} · score ${it.score.toFixed(4)} · ${it.interactions} interactions` }))),
    it.weights ? modalityBars(it.weights) : null)));
  if (!body.items.length) list.append(el("li", { class: "hint", text: "No rankable items." }));
}

async function loadUser(user) {
  showError("");
  const k = $("k-select").value;
  const exclude = $("exclude-seen").checked;
  try {
    const [history, recs] = await Promise.all([
      api(`/users/${user}/history`),
      api(`/users/${user}/recommendations?k=${k}&exclude_seen=${exclude}&explain=true`),
    ]);
    $("history-section").hidden = false;
    $("history-count").textContent = `(${history.items.length})`;
    $("history").replaceChildren(...history.items.map((it) =>
      el("li", {}, itemLink(it), el("span", { class: "meta", text: ` #${it.item}` }))));
    renderRecs(recs, `Top-${recs.k} for user ${user}`);
    history.items.length && !state.similarItem && loadSimilar(recs.items.length ? recs.items[0].item : history.items[0].item);
  } catch (err) {
    showError(err.message);
  }
}

async function loadNewUser(text) {
  showError("");
  const items = text.split(/[\s,;]+/).filter(Boolean).map(Number);
  if (!items.length || items.some((x) => !Number.isInteger(x))) {
    showError("Enter item ids as integers, separated by commas.");
    return;
  }
  try {
    const body = await api("/recommendations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items, k: Number($("k-select").value), explain: true,
        exclude_seen: $("exclude-seen").checked }),
    });
    $("history-section").hidden = true;
    renderRecs(body, `Top-${body.k} for a new user (${body.history.length} items)`);
  } catch (err) {
    showError(err.message);
  }
}

async function loadSimilar(item) {
  state.similarItem = item;
  try {
    const body = await api(`/items/${item}/similar?k=10&by=${encodeURIComponent($("similar-by").value)}`);
    $("similar-section").hidden = false;
    $("similar-query").replaceChildren(el("strong", { text: itemLabel(body.query) }),
      el("span", { class: "meta", text: ` #${body.query.item} · ${body.query.interactions} interactions` }));
    $("similar").replaceChildren(...body.items.map((it) => el("li", {},
      itemLink(it), el("span", { class: "meta", text: ` ${it.similarity.toFixed(3)}` }))));
  } catch (err) {
    showError(err.message);
  }
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(4) : "–";
}

async function init() {
  try {
    const info = await api("/info");
    state.info = info;
    const test = info.metrics.test || {};
    const mods = Object.entries(info.modalities).map(([m, d]) => `${m} ${d}-d`).join(", ") || "no content";
    $("run-info").replaceChildren(
      el("strong", { text: info.model }), ` on ${info.dataset} · ${info.users.toLocaleString()} users · `,
      `${info.items.toLocaleString()} items · ${mods} · test recall@20 ${fmt(test["recall@20"])} · `,
      `ndcg@20 ${fmt(test["ndcg@20"])}`);
    $("user-input").max = info.users - 1;
    $("user-suggestions").replaceChildren(...[0, 1, 2, 3, 4].filter((u) => u < info.users)
      .map((u) => el("option", { value: u })));
    $("similar-by").replaceChildren(...info.similar_by.map((b) => el("option", { value: b, text: `by ${b}` })));
  } catch (err) {
    showError(`Cannot reach the server: ${err.message}`);
  }
}

$("user-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadUser($("user-input").value);
});
$("random-user").addEventListener("click", () => {
  if (!state.info) return;
  const u = Math.floor(Math.random() * state.info.users);
  $("user-input").value = u;
  loadUser(u);
});
$("newuser-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadNewUser($("newuser-items").value);
});
$("similar-by").addEventListener("change", () => state.similarItem != null && loadSimilar(state.similarItem));
for (const id of ["k-select", "exclude-seen"]) {
  $(id).addEventListener("change", () => $("user-input").value !== "" && loadUser($("user-input").value));
}
init();
