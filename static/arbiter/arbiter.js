// The annotation page's keyboard, time on task and panels. The page works without this file: every key
// only selects radio buttons, reorders selects or fills a text box the way a mouse would, and submits the
// same form. ranking.js (drag and keys for rankings) and sync.js (drafts, preloading, the outbox) build
// on the small API below, window.Arbiter.
(function () {
  "use strict";

  const taskShownHooks = [];
  const keyHandlers = {};
  const validators = {};
  let shownTask = null;   // the #task element last set up (a swap replaces it)
  let shownAt = performance.now();
  let carried = 0;        // time spent on this task before a reload, from its draft
  let current = 0;        // index of the highlighted cell (a radio group the keys act on)

  const Arbiter = {
    taskEl: () => document.getElementById("task"),
    form: () => document.querySelector("#task form.judge"),
    onTaskShown: (fn) => taskShownHooks.push(fn),
    keys: keyHandlers,          // kind -> (event, form) => true when it handled the key
    validators: validators,     // kind -> form => message or null (checked before a submit)
    elapsed: () => Math.round(performance.now() - shownAt) + carried,
    addElapsed: (ms) => { if (ms > 0) carried += ms; },
    taskShown: taskShown,
    submit: submit,
    setCurrentCell: setCurrent,
    firstOpenCell: firstOpenCell,
  };
  window.Arbiter = Arbiter;

  function typing(target) {
    return target && (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && !["radio", "checkbox", "button", "submit", "reset"].includes(target.type)));
  }

  // Enter on these must do what they do (follow the link, press the button, open the panel).
  function activatable(target) {
    return target && target.closest && target.closest("a[href], button, summary, [role=button], input[type=submit], input[type=button]");
  }

  function inPanel(target) {
    return target && target.closest && target.closest("details.panel");
  }

  function submit(form) {
    if (form) form.requestSubmit();
  }

  // --- cells: radio groups (a criterion, a score, a step) the number keys fill one after another -----

  function cells(form) {
    return form ? Array.from(form.querySelectorAll(".cell")) : [];
  }

  function setCurrent(index, scroll) {
    const list = cells(Arbiter.form());
    if (!list.length) return;
    current = Math.max(0, Math.min(index, list.length - 1));
    // One cell needs no marker: the keys can only mean that one.
    list.forEach((cell, i) => cell.classList.toggle("current", i === current && list.length > 1));
    if (scroll !== false) list[current].scrollIntoView({ block: "nearest" });
  }

  function firstOpenCell() {
    const list = cells(Arbiter.form());
    const open = list.findIndex((cell) => !cell.querySelector("input[type=radio]:checked"));
    return open === -1 ? 0 : open;
  }

  function check(input) {
    input.checked = true;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function radioFor(scope, key) {
    return scope.querySelector('input[type=radio][data-keys~="' + CSS.escape(key) + '"]');
  }

  function cellKey(form, key) {
    const list = cells(form);
    const cell = list[current];
    const input = cell && radioFor(cell, key);
    if (input) {
      check(input);
      if (current < list.length - 1) setCurrent(current + 1);
      return true;
    }
    // Keys of radio groups outside the cells (the strength of a pairwise answer).
    const loose = Array.from(form.querySelectorAll('input[type=radio][data-keys~="' + CSS.escape(key) + '"]'))
      .find((el) => !el.closest(".cell"));
    if (loose) {
      check(loose);
      return true;
    }
    return false;
  }

  document.addEventListener("change", function (event) {
    const cell = event.target.closest && event.target.closest("#task form.judge .cell");
    if (cell) setCurrent(cells(Arbiter.form()).indexOf(cell), false);
  });
  document.addEventListener("focusin", function (event) {
    const cell = event.target.closest && event.target.closest("#task form.judge .cell");
    if (cell) setCurrent(cells(Arbiter.form()).indexOf(cell), false);
  });

  // --- panels --------------------------------------------------------------------------------------

  function togglePanel(details, focusSelector) {
    if (!details) return;
    details.open = !details.open;
    if (details.open && focusSelector) {
      const field = details.querySelector(focusSelector);
      if (field) field.focus();
    }
  }

  function closePanels() {
    document.querySelectorAll("#task details.panel[open]").forEach((d) => { d.open = false; });
  }

  // --- the keyboard ------------------------------------------------------------------------------------

  // "p": the answer before (the "Previous" link; htmx swaps it in, or the browser follows it).
  function goBack() {
    const link = document.querySelector("#task a.previous");
    if (!link) return false;
    link.click();
    return true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.isComposing) return;
    const form = Arbiter.form();
    const target = event.target;
    if (!form) {
      // "Nothing left" has no form, and going back is all there is to do there.
      if (event.key === "p" && !event.ctrlKey && !event.metaKey && !event.altKey && !typing(target) && goBack()) {
        event.preventDefault();
      }
      return;
    }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !inPanel(target)) {
      event.preventDefault();
      submit(form);
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      closePanels();
      if (typing(target) || inPanel(target)) target.blur();
      return;
    }
    if (typing(target) || inPanel(target)) return;
    if (event.key === "Enter") {
      if (activatable(target)) return;
      event.preventDefault();
      submit(form);
      return;
    }
    const kindHandler = keyHandlers[form.dataset.kind];
    if (kindHandler && kindHandler(event, form)) {
      event.preventDefault();
      return;
    }
    let handled = true;
    switch (event.key) {
      case "?":
      case "i":
        togglePanel(document.getElementById("instructions"));
        break;
      case "d": {
        const toggle = form.querySelector(".diff-toggle");
        if (toggle) toggle.checked = !toggle.checked;
        else handled = false;
        break;
      }
      case "s":
        togglePanel(document.querySelector("#task details.skip"), "input[name=reason]");
        break;
      case "f":
        togglePanel(document.querySelector("#task details.flag"), "input[name=category]");
        break;
      case "p":
        handled = goBack();
        break;
      case "ArrowDown":
      case "j":
        handled = cells(form).length > 1;  // with one cell the arrows scroll the page as usual
        if (handled) setCurrent(current + 1);
        break;
      case "ArrowUp":
      case "k":
        handled = cells(form).length > 1;  // with one cell the arrows scroll the page as usual
        if (handled) setCurrent(current - 1);
        break;
      default:
        handled = event.key.length === 1 && cellKey(form, event.key);
    }
    if (handled) event.preventDefault();
  });

  // Pairwise: "t" opens the "write a better one" box once "both bad" is chosen.
  keyHandlers.pairwise = function (event, form) {
    if (event.key !== "t") return false;
    const box = form.querySelector(".better textarea");
    if (!box || !form.querySelector('input[name=choice][value=both_bad]:checked')) return false;
    box.focus();
    return true;
  };

  // Demonstration: number keys start from that response's raw text; "t" goes to the text box.
  function startFrom(link) {
    const form = link.closest("form.judge");
    const text = form.querySelector("textarea[name=text]");
    // The raw text sits in an attribute and is put in as the box's value: text, never HTML.
    text.value = link.dataset.raw;
    const basedOn = form.querySelector("select[name=based_on]");
    if (basedOn) basedOn.value = link.dataset.response;
    text.dispatchEvent(new Event("input", { bubbles: true }));
    text.focus();  // the caret at the end: edit from there, or move up to change the text
  }

  keyHandlers.demonstration = function (event, form) {
    if (event.key === "t") {
      form.querySelector("textarea[name=text]").focus();
      return true;
    }
    const link = /^[1-9]$/.test(event.key) &&
      form.querySelector('article[data-position="' + event.key + '"] a.start-from');
    if (link) {
      startFrom(link);
      return true;
    }
    return false;
  };

  document.addEventListener("click", function (event) {
    const link = event.target.closest && event.target.closest("#task form.judge a.start-from");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    startFrom(link);
  });

  // --- submitting: checks, then time on task ----------------------------------------------------------

  // Capture phase on the document: this runs before htmx (which listens on the form) collects the fields,
  // and before sync.js decides how to send them.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form.matches || !form.matches("#task form.judge")) return;
    const validate = validators[form.dataset.kind];
    const problem = validate && validate(form);
    const box = form.querySelector(".client-error");
    if (box) box.remove();
    if (problem) {
      event.preventDefault();
      event.stopImmediatePropagation();
      const p = document.createElement("p");
      p.className = "field-error client-error";
      p.setAttribute("role", "alert");
      p.textContent = problem;
      form.querySelector("button[type=submit]").before(p);
      return;
    }
    const field = form.querySelector('input[name="duration_ms"]');
    if (field && !field.value) field.value = Arbiter.elapsed();
  }, true);

  // --- a task appears: on load, after an htmx swap, after sync.js swaps in a preloaded task -------------

  function taskShown() {
    const task = Arbiter.taskEl();
    if (!task || task === shownTask) return;
    shownTask = task;
    shownAt = performance.now();
    carried = 0;
    current = 0;
    taskShownHooks.forEach((fn) => fn(task));
    setCurrent(firstOpenCell(), false);
  }

  document.addEventListener("DOMContentLoaded", taskShown);
  ["htmx:afterSwap", "htmx:afterSettle", "htmx:load"].forEach((name) => document.addEventListener(name, taskShown));
  document.addEventListener("arbiter:restored", () => setCurrent(firstOpenCell(), false));
})();
