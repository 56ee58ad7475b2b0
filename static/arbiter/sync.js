// Nothing typed is lost and nobody waits for the network:
//
// - Drafts: every change to the answer form is kept in localStorage under the task id and put back when
//   that task is shown again (after a reload, a crash, a dropped connection; the lease keeps the task).
//   A draft is removed once the server acknowledged the answer.
// - Preload: once a task is shown (and no answer is waiting to be saved), the next task's fragment is
//   fetched (GET ?after=<task id>). A submit then shows it at once and posts the answer in the background.
// - Outbox: a posted answer stays in localStorage until the server acknowledges it, and is retried with
//   the same idempotency key and the same body, stored once (the server returns the first judgment for a
//   repeated key, and refuses the key with a different answer), also after a reload. An answer the server
//   refuses brings its task back with the message.
// Without a preload the form goes through htmx as usual. The server says what happened in HX-Trigger
// events: arbiter:saved, arbiter:invalid, arbiter:conflict, arbiter:skipped (annotate/views.py).
(function () {
  "use strict";
  const A = window.Arbiter;
  const root = document.querySelector(".annotate");
  if (!A || !root) return;

  const DRAFT = "arbiter:draft:";
  const OUTBOX = "arbiter:outbox";
  const DRAFT_DAYS = 14;
  const annotateUrl = root.dataset.annotateUrl;
  // A preloaded task's lease runs from the preload: past half of it, fetch the next task afresh instead.
  const preloadMaxAge = Number(root.dataset.leaseSeconds || 1800) * 500;
  const statusLine = document.getElementById("outbox-status");

  function load(key, fallback) {
    try {
      const value = localStorage.getItem(key);
      return value ? JSON.parse(value) : fallback;
    } catch (e) {
      return fallback;
    }
  }

  function store(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (e) { /* full or disabled storage: the page still works, only without the safety net */ }
  }

  function forget(key) {
    try { localStorage.removeItem(key); } catch (e) { /* as above */ }
  }

  function taskId(task) {
    return task && task.dataset.task ? task.dataset.task : null;
  }

  // --- drafts ----------------------------------------------------------------------------------------

  function answerFields(form) {
    const fields = [];
    for (const el of form.elements) {
      if (!el.name || el.type === "hidden" || el.disabled) continue;
      if (el.type === "radio" || el.type === "checkbox") {
        if (el.checked) fields.push([el.name, el.value]);
      } else if (el.value !== "" && (el.tagName === "SELECT" || el.tagName === "TEXTAREA" || el.tagName === "INPUT")) {
        fields.push([el.name, el.value]);
      }
    }
    return fields;
  }

  function saveDraft(form) {
    const id = taskId(form.closest("#task"));
    if (!id) return;
    const fields = answerFields(form);
    if (!fields.length) return forget(DRAFT + id);
    store(DRAFT + id, { fields: fields, elapsed: A.elapsed(), saved: Date.now() });
  }

  function restoreDraft(task) {
    const id = taskId(task);
    const form = task.querySelector("form.judge");
    const draft = id && form && load(DRAFT + id, null);
    if (!draft || !Array.isArray(draft.fields) || !draft.fields.length) return;
    for (const [name, value] of draft.fields) {
      for (const el of form.querySelectorAll('[name="' + CSS.escape(name) + '"]')) {
        if (el.type === "radio" || el.type === "checkbox") el.checked = el.value === value;
        else el.value = value;
      }
    }
    A.addElapsed(draft.elapsed || 0);
    const notice = task.querySelector(".draft-notice");
    if (notice) {
      notice.textContent = "Your unsaved answer to this item was restored from this browser.";
      notice.hidden = false;
    }
    form.dispatchEvent(new CustomEvent("arbiter:restored", { bubbles: true }));
  }

  function dropOldDrafts() {
    const cutoff = Date.now() - DRAFT_DAYS * 864e5;
    try {
      Object.keys(localStorage)
        .filter((key) => key.startsWith(DRAFT) && (load(key, {}).saved || 0) < cutoff)
        .forEach(forget);
    } catch (e) { /* storage unavailable */ }
  }

  ["input", "change"].forEach((name) => document.addEventListener(name, function (event) {
    const form = event.target.closest && event.target.closest("#task form.judge");
    if (form) saveDraft(form);
  }));

  // --- the outbox ------------------------------------------------------------------------------------

  const outbox = () => load(OUTBOX, []);
  const waiting = () => new Set(outbox().map((entry) => entry.task));
  const inflight = new Set();
  let retryTimer = null;
  let retryDelay = 1000;
  let loggedOut = false;

  function showStatus(message, isError) {
    const n = outbox().length;
    // For people and tests alike: "busy" while an answer is not yet acknowledged.
    document.documentElement.dataset.sync = n || inflight.size ? "busy" : "idle";
    let text = message || "";
    // Only answers that take a while are worth a word: a quick save would just flicker.
    const slow = outbox().some((entry) => entry.failed || Date.now() - entry.queued > 1500);
    if (!text && n && slow) {
      text = (n === 1 ? "1 answer" : n + " answers") + " waiting to be saved" +
        (loggedOut ? ": log in again (in another tab) to save them." : "; retrying…");
    }
    statusLine.textContent = text;
    statusLine.hidden = !text;
    statusLine.classList.toggle("error", Boolean(isError));
  }

  function enqueue(form) {
    const task = taskId(form.closest("#task"));
    const entry = {
      key: form.elements.idempotency_key.value,
      url: form.action,
      body: new URLSearchParams(new FormData(form)).toString(),
      task: task,
      queued: Date.now(),
    };
    store(OUTBOX, outbox().filter((e) => e.key !== entry.key).concat([entry]));
    showStatus();
    setTimeout(() => showStatus(), 1600);
    return entry;
  }

  function dequeue(entry) {
    store(OUTBOX, outbox().filter((e) => e.key !== entry.key));
  }

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  async function send(entry) {
    let response;
    try {
      response = await fetch(entry.url, {
        method: "POST",
        body: entry.body,
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/x-www-form-urlencoded",
          "HX-Request": "true",
          "X-CSRFToken": csrfToken(),
        },
      });
    } catch (e) {
      return { outcome: "retry" };
    }
    let events = {};
    try {
      events = JSON.parse(response.headers.get("HX-Trigger") || "{}");
    } catch (e) { /* no events */ }
    loggedOut = response.redirected && /\/login\//.test(response.url);
    if (events["arbiter:saved"]) return { outcome: "saved", detail: events["arbiter:saved"] };
    if (events["arbiter:invalid"]) return { outcome: "invalid", detail: events["arbiter:invalid"], html: await response.text() };
    if (events["arbiter:conflict"]) return { outcome: "conflict", detail: events["arbiter:conflict"], html: await response.text() };
    // A lapsed session (redirected to the login page) or a server error: keep the answer and try again.
    if (loggedOut || response.status >= 500 || response.status === 429) return { outcome: "retry" };
    return { outcome: "failed", status: response.status };
  }

  // "N done · M left": what is left goes down by what got done since the line was rendered (data-done, data-left).
  function setDone(done) {
    const count = document.getElementById("progress-count");
    if (count && Number.isInteger(done)) count.textContent = done + " done";
    const left = document.getElementById("progress-left");
    if (!left || !Number.isInteger(done) || left.dataset.more) return;
    const remaining = Math.max(0, Number(left.dataset.left) - (done - Number(left.dataset.done)));
    if (Number.isInteger(remaining)) left.textContent = "· " + remaining + " left";
  }

  async function flush() {
    clearTimeout(retryTimer);
    for (const entry of outbox()) {
      if (inflight.has(entry.key)) continue;
      inflight.add(entry.key);
      let result;
      try {
        result = await send(entry);
      } finally {
        inflight.delete(entry.key);
      }
      const shown = taskId(A.taskEl());
      if (result.outcome === "retry") {
        store(OUTBOX, outbox().map((e) => (e.key === entry.key ? Object.assign(e, { failed: true }) : e)));
        retryTimer = setTimeout(flush, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
        showStatus();
        return;
      }
      retryDelay = 1000;
      dequeue(entry);
      if (result.outcome === "saved") {
        forget(DRAFT + entry.task);
        setDone(result.detail.done);
        if (shown === entry.task) refresh();  // this task is answered now: on to the next one
      } else if (result.outcome === "invalid") {
        // The server refused the answer: its task comes back with the message and the answer as sent.
        if (shown !== entry.task) swapTask(result.html);
      } else if (result.outcome === "conflict") {
        forget(DRAFT + entry.task);
        if (shown === entry.task) swapTask(result.html);
        else showStatus(result.detail.message, true);
      } else {
        showStatus("An answer could not be saved (HTTP " + result.status + "). Reload the page and answer again.", true);
      }
    }
    if (!outbox().length) {
      if (!statusLine.classList.contains("error")) showStatus();
      else document.documentElement.dataset.sync = "idle";
      preload();
    }
  }

  window.addEventListener("online", flush);

  // --- swapping tasks ------------------------------------------------------------------------------

  function swapTask(html) {
    const task = A.taskEl();
    if (!task) return;
    htmx.swap(task, html, { swapStyle: "outerHTML", swapDelay: 0, settleDelay: 0 });
    A.taskShown();
  }

  function refresh() {
    htmx.ajax("GET", annotateUrl, { target: "#task", swap: "outerHTML" });
  }

  // --- preloading ------------------------------------------------------------------------------------

  let preloaded = null;   // {forTask, task, html}
  let preloading = null;  // the task id a preload is under way for

  function preload() {
    const task = A.taskEl();
    const id = taskId(task);
    // While an answer waits to be saved its task is still leased, and the server could hand it back as
    // "the next one": preload only once the outbox is empty. A changed earlier answer (a revision) is followed
    // by the current task, which the server sends with the acknowledgement: nothing to fetch ahead.
    if (!id || task.dataset.revision || outbox().length || preloading === id || (preloaded && preloaded.forTask === id)) return;
    preloading = id;
    fetch(annotateUrl + "?after=" + encodeURIComponent(id), { credentials: "same-origin", headers: { "HX-Request": "true" } })
      .then((response) => (response.ok && !response.redirected ? response.text() : null))
      .catch(() => null)
      .then((html) => {
        if (preloading === id) preloading = null;
        // Kept only for the task still on screen and not being answered through htmx right now: a preload that
        // comes back while its task's answer is posted belongs to a task that is about to be replaced, and used
        // later (a revision of that task) it would show a stale fragment instead of the server's reply.
        const shown = A.taskEl();
        if (!html || taskId(shown) !== id || shown.querySelector("form.htmx-request")) return;
        const match = /<section id="task"[^>]*\sdata-task="(\d*)"/.exec(html);
        const next = match ? match[1] : null;
        if (next === null || next === id || waiting().has(next)) return;
        preloaded = { forTask: id, task: next, html: html, at: Date.now() };
        document.documentElement.dataset.preloaded = next || "none";
      });
  }

  // --- submitting ----------------------------------------------------------------------------------

  let lastHtmxSubmit = null;

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form.matches || !form.matches("#task form.judge")) return;
    const task = form.closest("#task");
    const id = taskId(task);
    const stop = () => { event.preventDefault(); event.stopPropagation(); };
    if (form.dataset.sent || waiting().has(id)) {
      stop();  // already sent (a double submit) or waiting in the outbox
      return;
    }
    if (preloaded && Date.now() - preloaded.at > preloadMaxAge) {
      preloaded = null;
      delete document.documentElement.dataset.preloaded;
    }
    // A revision is never followed by the preload: the server answers it with the task to go back to.
    if (preloaded && preloaded.forTask === id && !task.dataset.revision) {
      stop();
      form.dataset.sent = "1";
      enqueue(form);
      const next = preloaded;
      preloaded = null;
      delete document.documentElement.dataset.preloaded;
      const count = document.getElementById("progress-count");
      const done = count ? parseInt(count.textContent, 10) : NaN;
      swapTask(next.html);
      setDone(done + 1);
      flush();
      return;
    }
    if (outbox().length) {
      // Earlier answers are still on their way: this one joins them, and the next task is fetched once
      // it is saved (asking now could return a task whose answer has not arrived yet).
      stop();
      form.dataset.sent = "1";
      enqueue(form);
      showPending(task);
      flush();
      return;
    }
    // No preload yet: htmx posts the form and swaps in the answer. Kept in case the network fails.
    lastHtmxSubmit = form;
  }, true);

  function showPending(task) {
    const notice = task.querySelector(".draft-notice");
    if (notice) {
      notice.textContent = "Your answer to this item is waiting to be saved; the next item comes as soon as it is.";
      notice.hidden = false;
    }
    task.classList.add("pending");
  }

  document.addEventListener("htmx:sendError", function (event) {
    const form = lastHtmxSubmit;
    if (!form || !form.isConnected || event.detail.elt !== form) return;
    form.dataset.sent = "1";
    enqueue(form);
    showPending(form.closest("#task"));
    retryTimer = setTimeout(flush, retryDelay);
  });

  document.addEventListener("arbiter:saved", function (event) {
    forget(DRAFT + String(event.detail.task));
  });
  document.addEventListener("arbiter:skipped", function (event) {
    forget(DRAFT + String(event.detail.task));
  });

  // --- a task appears ---------------------------------------------------------------------------------

  A.onTaskShown(function (task) {
    const id = taskId(task);
    if (preloaded && preloaded.forTask !== id && !task.dataset.revision) {
      // Fetched for another task (a revision in between keeps it: the page comes back to that task).
      preloaded = null;
      delete document.documentElement.dataset.preloaded;
    }
    restoreDraft(task);
    if (id && waiting().has(id)) showPending(task);
    if (outbox().length) flush();
    else preload();
  });

  document.addEventListener("DOMContentLoaded", function () {
    dropOldDrafts();
    showStatus();
  });
})();
