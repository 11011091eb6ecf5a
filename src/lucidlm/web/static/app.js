// The page of `lucidlm serve`: reads /api/info, then for a text asks /api/predict (fast) and
// /api/explain (slower), and /api/intervene or /api/intervene-subnetwork when the user corrects a
// concept. Signed in with a token (kept in sessionStorage: gone with the tab), a corrector records
// corrections (/api/corrections) and takes texts from the review queue (/api/queue/next).
// Plain DOM, no framework, no build step; text goes in through textContent only.
"use strict";

// request: the latest text predicted; correction: the latest correction asked (a newer one makes
// older answers stale, and a new text makes every pending correction stale)
// sent: how many of the typed characters the latest text sent (the page sends at most max_text_chars)
// me: who the token is ({name, role}); queued: the text the review queue handed out, and what it asks
const state = { info: null, text: "", prediction: null, request: 0, correction: 0, sent: null, me: null, queued: null };
const TOKEN = "lucidlm-token";
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || ["id", "title", "for", "role", "value"].includes(key)) {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function api(path, body, method = body === undefined ? "GET" : "POST") {
  const headers = body === undefined ? {} : { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;
const signed = (x, digits = 3) => (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(digits);
const count = (n) => n.toLocaleString("en-US");
// Characters as the server counts them (code points: an emoji is one), never half a surrogate pair.
const characters = (text) => Array.from(text);

function setStatus(message) { $("#status").textContent = message; }

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function show(id, visible = true) { $(id).hidden = !visible; }

// ---- the run ----------------------------------------------------------------------------------
async function loadInfo() {
  try {
    state.info = await api("/api/info");
  } catch (error) {
    showError(`Could not read the model: ${error.message}`);
    return;
  }
  const info = state.info;
  const mode = [info.mode, info.concept_objective].filter(Boolean).join(", ");
  const parts = [`run ${info.run || "(unnamed)"}`, `${info.family}${mode ? ` (${mode})` : ""}`,
    `backbone ${info.backbone} (${info.backbone_training})`, `task ${info.task}`];
  if (info.classes.length) parts.push(`labels ${info.classes.join(", ")}`);
  $("#run-info").textContent = parts.join(" · ");
  $("#contribution-meaning").textContent = info.contribution_meaning;  // the library's own line (explain.explanation)
  updateCount();
  if (info.can_intervene_subnetwork) {
    const concepts = $("#subnetwork-concept");
    for (const c of info.concepts) concepts.append(el("option", { value: c.name, text: c.name }));
    concepts.addEventListener("change", fillSubnetworkValues);
    fillSubnetworkValues();
  }
  if (info.corrections && info.corrections.recording) {
    for (const c of info.classes) $("#record-label").append(el("option", { value: c, text: c }));
    show("#account");
    show("#queue-section", Boolean(info.corrections.queue));
    await whoAmI();
    renderCorrectionsInfo(info.corrections);
  }
}

function fillSubnetworkValues() {
  const concept = state.info.concepts.find((c) => c.name === $("#subnetwork-concept").value);
  const values = $("#subnetwork-value");
  values.replaceChildren(...concept.values.map((v) => el("option", { value: v, text: v })));
}

// A longer text stays whole in the box, and the page says that only its start will be sent.
function updateCount() {
  const limit = state.info ? state.info.max_text_chars : 0;
  const typed = characters($("#text").value).length;
  $("#char-count").textContent = limit ? `${count(typed)} / ${count(limit)} characters` : "";
  const over = Boolean(limit) && typed > limit;
  $("#char-count").classList.toggle("warn", over);
  const note = $("#text-limit");
  note.hidden = !over;
  note.textContent = over ? `This text has ${count(typed)} characters; the page sends the model only the first `
    + `${count(limit)} (the most it takes): the last ${count(typed - limit)} are left out.` : "";
}

// ---- predict and explain ---------------------------------------------------------------------
async function submitText(event) {
  event.preventDefault();
  const typed = characters($("#text").value);
  const limit = state.info ? state.info.max_text_chars : typed.length;
  const text = typed.slice(0, limit).join("");
  const request = ++state.request;
  state.correction++;
  showError("");
  setStatus("Predicting…");
  for (const id of ["#compare-section", "#tokens-section", "#prototypes-section", "#subnetworks-section"]) show(id, false);
  try {
    const prediction = await api("/api/predict", { text });
    if (request !== state.request) return;
    state.text = text;
    state.sent = typed.length > limit ? { sent: limit, typed: typed.length } : null;
    state.prediction = prediction;
    renderPrediction(prediction);
    renderConcepts(prediction);
    prepareRecording();
    show("#subnetwork-section", state.info.can_intervene_subnetwork);
    setStatus("Explaining (token attributions take a moment)…");
    const explanation = await api("/api/explain", { text });
    if (request !== state.request) return;
    renderExplanation(explanation);
    setStatus("");
  } catch (error) {
    if (request !== state.request) return;
    setStatus("");
    showError(error.message);
  }
}

function probabilityBars(probabilities, highlight) {
  const list = el("ul", { class: "bars" });
  for (const [name, p] of Object.entries(probabilities)) {
    const bar = el("span", { class: "bar" });
    bar.style.width = percent(p);
    list.append(el("li", { class: name === highlight ? "top" : "" },
      el("span", { class: "bar-name", text: name }),
      el("span", { class: "bar-track", role: "presentation" }, bar),
      el("span", { class: "bar-value", text: percent(p) })));
  }
  return list;
}

function labelBlock(prediction) {
  const p = prediction.probabilities[prediction.label];
  return el("p", { class: "label" }, "Label ",
    el("strong", { class: "label-value", "data-label": String(prediction.label), text: String(prediction.label) }),
    p === undefined ? null : el("span", { class: "muted", text: ` (${percent(p)})` }));
}

function renderPrediction(prediction) {
  const box = $("#prediction");
  box.replaceChildren(labelBlock(prediction));
  if (Object.keys(prediction.probabilities).length) box.append(probabilityBars(prediction.probabilities, prediction.label));
  const notes = readingNotes(prediction);
  if (notes.length) box.append(el("p", { id: "reading-note", class: "note" }, notes.join(" ")));
  show("#prediction-section");
}

// What of the text the label rests on: the model reads its first max_length tokens (answers
// without the fields are of a text read whole), and the page sends at most max_text_chars.
function readingNotes(prediction) {
  const notes = [];
  if (state.sent) notes.push(`The page sent the first ${count(state.sent.sent)} of your ${count(state.sent.typed)} characters.`);
  if (prediction.truncated === true) {
    notes.push(`The model read the first ${count(prediction.tokens_read)} of ${count(prediction.tokens_total)} tokens of this text`
      + " (it reads at most that many); the rest did not count.");
  }
  return notes;
}

function renderConcepts(prediction) {
  const names = Object.keys(prediction.concepts);
  show("#concepts-section", names.length > 0);
  show("#reset", false);
  renderSuggestion(prediction);
  const share = $("#values-share");
  share.hidden = prediction.concept_values_share == null;
  share.textContent = share.hidden ? ""
    : `The concept values account for ${percent(prediction.concept_values_share)} of this decision; the text beside them for the rest.`;
  const parts = Object.fromEntries(prediction.contributions.map((c) => [c.concept, c]));
  const contributions = Object.fromEntries(prediction.contributions.map((c) => [c.concept, c.contribution]));
  const largest = Math.max(1e-9, ...Object.values(contributions).map(Math.abs));
  const body = $("#concepts tbody");
  body.replaceChildren();
  for (const name of names) {
    const concept = prediction.concepts[name];
    const select = el("select", { "data-concept": name, "aria-label": `${name}: value`, disabled: !state.info.can_intervene });
    for (const value of Object.keys(concept.probabilities)) select.append(el("option", { value, text: value }));
    select.value = concept.value;
    select.addEventListener("change", interveneOnConcepts);
    const setCell = el("td", { class: "set-value", "data-heading": "Set it to" }, select);
    if (state.info.can_confirm) {  // confirming makes the concept certain, which can move the label
      const confirm = el("input", { type: "checkbox", "data-confirm": name, "aria-label": `${name}: confirm ${concept.value}` });
      confirm.addEventListener("change", interveneOnConcepts);
      setCell.append(el("label", { class: "confirm", title: "The text says what the model read: make the model sure of it" },
        confirm, " sure"));
    }
    const contribution = contributions[name];
    const bar = el("span", { class: `contribution ${contribution >= 0 ? "pos" : "neg"}` });
    bar.style.width = `${(50 * Math.abs(contribution || 0)) / largest}%`;
    body.append(el("tr", { "data-concept": name },
      el("th", { scope: "row", text: name }),
      el("td", { class: "read-value", "data-heading": "The model reads", text: concept.value }),
      el("td", { class: "probability", "data-heading": "Probability", text: percent(concept.probabilities[concept.value]) }),
      el("td", { class: "contribution-column", "data-heading": "Contribution" }, el("div", { class: "contribution-cell" },
        el("span", { class: "contribution-track", role: "presentation" }, bar),
        el("span", { text: contribution === undefined ? "" : signed(contribution) })),
        parts[name] && parts[name].from_value != null
          ? el("span", { class: "contribution-split muted", text: `value ${signed(parts[name].from_value)} · text ${signed(parts[name].from_text)}` })
          : null),
      setCell));
  }
}

// What to ask first: the concept whose correction is most likely to change the decision, a button that
// takes the person to it; or, when no single correction would, the pair that would (or that none would).
function renderSuggestion(prediction) {
  const ask = $("#ask-next");
  const suggestion = prediction.suggestion;
  ask.hidden = !suggestion;
  ask.replaceChildren();
  if (!suggestion) return;
  const goTo = (name) => {
    const select = document.querySelector(`#concepts select[data-concept="${CSS.escape(name)}"]`);
    select.scrollIntoView({ block: "center" });
    select.focus();
  };
  if (suggestion.change_probability > 0) {
    const button = el("button", { type: "button", class: "link", text: `Check first: ${suggestion.concept}?` });
    button.addEventListener("click", () => goTo(suggestion.concept));
    ask.append(button, ` A correction there changes the decision with probability ${percent(suggestion.change_probability)}`
      + ` (by the model's own reading); then ${prediction.ask_next.slice(1).join(", ")}.`);
  } else if (suggestion.pair) {
    const names = Object.keys(suggestion.pair);
    const button = el("button", { type: "button", class: "link", text: `Check ${names.join(" and ")}?` });
    button.addEventListener("click", () => goTo(names[0]));
    const pair = names.map((name) => `${name} = ${suggestion.pair[name]}`).join(" and ");
    ask.append("No single correction would change the decision. ", button,
      ` Setting ${pair} would (to ${suggestion.pair_label}).`);
  } else {
    ask.append("No correction of one or two concepts would change the decision.");
  }
}

// ---- corrections -----------------------------------------------------------------------------
function changedConcepts() {
  const values = {};
  for (const select of document.querySelectorAll("#concepts select")) {
    const name = select.dataset.concept;
    const read = state.prediction.concepts[name].value;
    const confirm = select.closest("tr").querySelector("input[data-confirm]");
    if (confirm) {  // only the value read can be confirmed; another value is a correction already
      confirm.disabled = select.value !== read;
      if (confirm.disabled) confirm.checked = false;
    }
    if (select.value !== read || (confirm && confirm.checked)) values[name] = select.value;
    select.closest("tr").classList.toggle("changed", name in values);
  }
  return values;
}

async function interveneOnConcepts() {
  const values = changedConcepts();
  show("#reset", Object.keys(values).length > 0);
  const request = ++state.correction;  // also when nothing is left to ask: a pending answer is stale
  if (!Object.keys(values).length) { show("#compare-section", false); return; }
  showError("");
  setStatus("Recomputing the label with your concept values…");
  try {
    const result = await api("/api/intervene", { text: state.text, values });
    if (request !== state.correction) return;
    renderComparison(result, describeCorrection(values));
    setStatus("");
  } catch (error) {
    if (request === state.correction) { setStatus(""); showError(error.message); }
  }
}

async function rewireSubnetwork(event) {
  event.preventDefault();
  if (!state.prediction) { showError("Predict a text first."); return; }
  const body = { text: state.text, concept: $("#subnetwork-concept").value, value: $("#subnetwork-value").value,
    fraction: Number($("#subnetwork-fraction").value), score: $("#subnetwork-score").value };
  const request = ++state.correction;
  showError("");
  setStatus("Rewiring the subnetwork…");
  try {
    const result = await api("/api/intervene-subnetwork", body);
    if (request !== state.correction) return;
    renderComparison(result, `The subnetwork of ${body.concept} was rewired toward ${body.value}: `
      + `${result.weights_changed.toLocaleString()} weights swapped, for this text only.`);
    setStatus("");
  } catch (error) {
    if (request === state.correction) { setStatus(""); showError(error.message); }
  }
}

function resetConcepts() {
  state.correction++;  // an answer still on its way is for values no longer shown
  for (const select of document.querySelectorAll("#concepts select")) {
    select.value = state.prediction.concepts[select.dataset.concept].value;
  }
  for (const confirm of document.querySelectorAll("#concepts input[data-confirm]")) confirm.checked = false;
  changedConcepts();
  show("#reset", false);
  show("#compare-section", false);
}

function describeValues(values) {
  return Object.entries(values).map(([name, value]) => `${name} = ${value}`).join(", ");
}

function describeCorrection(values) {
  const entries = Object.entries(values);
  const read = ([name, value]) => value === state.prediction.concepts[name].value;
  const set = Object.fromEntries(entries.filter((entry) => !read(entry)));
  const confirmed = Object.fromEntries(entries.filter(read));
  const parts = [];
  if (Object.keys(set).length) parts.push(`You set ${describeValues(set)}`);
  if (Object.keys(confirmed).length) parts.push(`${parts.length ? "you" : "You"} confirmed ${describeValues(confirmed)}, now certain`);
  return `${parts.join("; ")}.`;
}

function predictionCard(prediction, other, changed) {
  const card = [labelBlock(prediction)];
  if (Object.keys(prediction.probabilities).length) card.push(probabilityBars(prediction.probabilities, prediction.label));
  const concepts = el("dl", { class: "concept-list" });
  for (const [name, concept] of Object.entries(prediction.concepts)) {
    const differs = other.concepts[name] && other.concepts[name].value !== concept.value;
    concepts.append(el("dt", { text: name, class: changed.includes(name) ? "changed" : "" }),
      el("dd", { class: differs ? "changed" : "", text: `${concept.value} (${percent(concept.probabilities[concept.value])})` }));
  }
  if (concepts.childElementCount) card.push(concepts);
  return card;
}

function renderComparison(result, summary) {
  const changed = Object.keys(result.interventions);
  $("#before .body").replaceChildren(...predictionCard(result.before, result.after, changed));
  $("#after .body").replaceChildren(...predictionCard(result.after, result.before, changed));
  const verdict = result.label_changed
    ? `The label changes from ${result.before.label} to ${result.after.label}.`
    : `The label stays ${result.after.label}.`;
  $("#compare-summary").textContent = `${summary} ${verdict}`;
  $("#compare-section").dataset.labelChanged = String(result.label_changed);
  show("#compare-section");
}

// ---- people, recorded corrections and the review queue ----------------------------------------
const mayRecord = () => Boolean(state.me && ["corrector", "admin"].includes(state.me.role));

async function whoAmI() {
  try {
    state.me = await api("/api/me");
  } catch (error) {  // a token the server no longer knows: forget it
    sessionStorage.removeItem(TOKEN);
    state.me = { name: null, role: "viewer" };
    showError(`Signed out: ${error.message}`);
  }
  const signedIn = Boolean(state.me.name);
  show("#login-form", !signedIn);
  show("#signed-in", signedIn);
  $("#who").textContent = signedIn ? `Signed in as ${state.me.name} (${state.me.role}).` : "";
  $("#queue-next").disabled = !mayRecord();
  $("#queue-state").textContent = mayRecord() || !state.info.corrections.queue ? $("#queue-state").textContent
    : "Sign in with a corrector's token to review texts.";
  if (state.prediction) prepareRecording();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("#token").value.trim();
  $("#token").value = "";  // the token stays out of the page
  if (!token) return;
  sessionStorage.setItem(TOKEN, token);
  showError("");
  await whoAmI();
}

async function signOut() {
  sessionStorage.removeItem(TOKEN);
  await whoAmI();
}

function renderCorrectionsInfo(corrections) {
  const n = corrections.waiting;
  $("#waiting").textContent = `${count(n)} correction${n === 1 ? "" : "s"} of this run waiting to be learned `
    + "(lucidlm learn)." + (corrections.users ? "" : " No user holds a token yet: lucidlm users add NAME --role corrector.");
  if (corrections.queue && mayRecord()) {
    $("#queue-state").textContent = `${count(corrections.queue.waiting)} of ${count(corrections.queue.texts)} texts `
      + `not yet reviewed, most worth asking first (${corrections.queue.policy.replaceAll("_", " ")}).`;
  }
}

async function refreshCorrectionsInfo() {
  try { renderCorrectionsInfo((await api("/api/info")).corrections); } catch (error) { /* the next answer will say */ }
}

function prepareRecording() {
  if (!state.info.corrections || !state.info.corrections.recording) return;
  show("#record-section");
  $("#record").disabled = !mayRecord();
  $("#record-label").value = "";
  $("#record-status").textContent = mayRecord() ? "" : "Sign in with a corrector's token to record corrections.";
}

async function recordCorrection(event) {
  event.preventDefault();
  const values = state.info.concepts.length ? changedConcepts() : {};
  const label = $("#record-label").value || null;
  if (!Object.keys(values).length && label === null) {
    $("#record-status").textContent = "Set or confirm a concept above, or choose the right label, first.";
    return;
  }
  // one key a click: a request retried after a lost answer is stored once
  const key = `page-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  const body = { text: state.text, values, label, key, note: $("#record-note").value.trim() || null };
  $("#record").disabled = true;
  try {
    const { record } = await api("/api/corrections", body);
    const said = record.gold_label ? `; you say ${record.gold_label}` : "";
    $("#record-status").textContent = `Recorded as correction ${record.id} by ${record.author}: `
      + `${describeValues(record.set_values) || "no concept changed"}, label ${record.label_before} → ${record.label_after}${said}.`;
    $("#record-note").value = "";
    if (state.queued && state.queued.text === state.text) state.queued = null;
    await refreshCorrectionsInfo();
  } catch (error) {
    $("#record-status").textContent = `Not recorded: ${error.message}`;
  } finally {
    $("#record").disabled = !mayRecord();
  }
}

async function takeFromQueue(skip = false) {
  showError("");
  try {
    const item = skip ? await api("/api/queue/skip", {}) : await api("/api/queue/next");
    state.queued = item.text ? item : null;
    show("#queue-skip", Boolean(item.text));
    show("#queue-ask", Boolean(item.text));
    if (!item.text) {
      $("#queue-state").textContent = `No text is left for you (${count(item.remaining)} not yet reviewed).`;
      return;
    }
    $("#queue-ask").textContent = item.ask
      ? `The queue asks first: is ${item.ask} what the model reads? Set or confirm it, then record.`
      : "The queue asks for the label: choose the right one, then record.";
    $("#queue-state").textContent = `Text ${count(item.position + 1)} in the queue's order; `
      + `${count(item.remaining)} not yet reviewed. It is yours until you record or skip it.`;
    $("#text").value = item.text;
    updateCount();
    $("#text-form").requestSubmit();
  } catch (error) {
    showError(error.message);
  }
}

// ---- explanation -----------------------------------------------------------------------------
function renderExplanation(explanation) {
  renderTokens(explanation.tokens);
  renderPrototypes(explanation.prototypes);
  renderSubnetworks(explanation.subnetworks);
}


function renderTokens(attributions) {
  show("#tokens-section", attributions.length > 0);
  if (!attributions.length) return;
  const select = $("#token-target");
  select.replaceChildren(...attributions.map((a, i) => el("option", { value: String(i), text: a.target })));
  select.onchange = () => drawTokens(attributions[Number(select.value)]);
  drawTokens(attributions[0]);
}

// The text as the user wrote it, one box a word (its subword tokens together, with their summed
// score), green and solid underline where the word raises the target, red and dashed where it
// lowers it; what to show comes computed from the server (TokenAttribution.groups).
function drawTokens(attribution) {
  const attention = attribution.method === "attention";
  for (const key of document.querySelectorAll("[data-legend]")) key.hidden = (key.dataset.legend === "attention") !== attention;
  $("#token-method").textContent = attention
    ? "Token attention: how much each word weighs in the text's pooled representation (its tokens' weights summed)."
    : `Scores by ${attribution.method.replace(/_/g, " ")} toward ${describeTarget(attribution.target)}: `
      + "how much each word raises (+) or lowers (−) it; a word's score is the sum of its tokens' scores.";
  const groups = attribution.groups;
  const largest = Math.max(1e-12, ...groups.map((g) => Math.abs(g.score)));
  const box = $("#tokens");
  box.replaceChildren();
  groups.forEach((group, g) => {
    if (group.pair && !(g > 0 && groups[g - 1].pair)) box.append(el("span", { class: "pair-mark", text: " ‖ " }));
    if (group.before) box.append(group.before);
    const pieces = group.tokens.map((i) => attribution.tokens[i]).join(" ");
    const sign = attention ? "att" : group.score >= 0 ? "pos" : "neg";
    const span = el("span", { class: `tok ${sign}`, text: group.text, "data-score": String(group.score),
      title: `${attribution.target}: ${attention ? group.score.toFixed(4) : signed(group.score, 4)} (${pieces})` });
    span.style.setProperty("--strength", (Math.abs(group.score) / largest).toFixed(3));
    box.append(span);
  });
  if (attribution.unread) {
    box.append(el("span", { class: "unread", text: attribution.unread,
      title: "Not read: the model reads only the first tokens of a text" }));
  }
}

function describeTarget(target) {
  const prediction = state.prediction;
  if (target === "label" && prediction) return `the label ${prediction.label}`;
  const concept = prediction && prediction.concepts[target];
  return concept ? `${target} = ${concept.value} (the value the model reads)` : target;
}

function renderPrototypes(prototypes) {
  show("#prototypes-section", prototypes.length > 0);
  const list = $("#prototypes");
  list.replaceChildren();
  for (const match of prototypes) {
    const pulls = Object.entries(match.contributions).map(([c, v]) => `${c} ${signed(v)}`).join(", ");
    const examples = el("ol", { class: "examples" });
    for (const example of match.nearest_examples) {
      examples.append(el("li", {},
        el("q", { text: example.text_pair ? `${example.text} ‖ ${example.text_pair}` : example.text }),
        el("span", { class: "muted", text: ` label ${example.label} · distance ${example.distance.toFixed(3)}`
          + (example.top_tokens.length ? ` · attends to ${example.top_tokens.join(", ")}` : "") })));
    }
    list.append(el("li", { class: "card" },
      el("h3", { text: `Prototype ${match.prototype}` + (match.prototype_class !== null ? ` of class ${match.prototype_class}` : "") }),
      el("p", { class: "muted", text: `similarity ${match.similarity.toFixed(3)} · pull toward each class: ${pulls}` }),
      match.nearest_examples.length ? examples : el("p", { class: "muted", text: "No projection: no training examples recorded." })));
  }
}

function renderSubnetworks(stats) {
  show("#subnetworks-section", Boolean(stats));
  if (!stats) return;
  const table = el("table", {});
  const head = el("tr", {}, ...["Concept", "Density", "Weights it alone keeps", ...stats.concepts.map((c) => `Jaccard with ${c}`)]
    .map((h) => el("th", { scope: "col", text: h })));
  table.append(el("thead", {}, head));
  const body = el("tbody");
  stats.concepts.forEach((name, k) => {
    const row = el("tr", {}, el("th", { scope: "row", text: name }),
      el("td", { text: percent(stats.density[name]) }), el("td", { text: percent(stats.owned_by_one[name]) }));
    for (const overlap of stats.jaccard[k]) {
      const cell = el("td", { class: overlap > 0.6 ? "heat dark" : "heat", text: overlap.toFixed(2) });
      cell.style.setProperty("--strength", overlap.toFixed(3));
      row.append(cell);
    }
    body.append(row);
  });
  table.append(body);
  $("#subnetworks").replaceChildren(
    el("p", { class: "muted", text: `Weights kept by every concept: ${percent(stats.shared_by_all)}.` }), table);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#text-form").addEventListener("submit", submitText);
  $("#text").addEventListener("input", updateCount);
  $("#text").addEventListener("keydown", (event) => {  // Ctrl+Enter (or ⌘+Enter) submits
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#text-form").requestSubmit();
  });
  $("#reset").addEventListener("click", resetConcepts);
  $("#subnetwork-form").addEventListener("submit", rewireSubnetwork);
  $("#login-form").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", signOut);
  $("#record-form").addEventListener("submit", recordCorrection);
  $("#queue-next").addEventListener("click", () => takeFromQueue(false));
  $("#queue-skip").addEventListener("click", () => takeFromQueue(true));
  loadInfo();
});
