// Ranking by keyboard and by drag. The rank <select> of each response is the answer (it is what the form
// posts, with or without JavaScript); everything here only sets those selects and keeps the list in the
// order they say, best first.
//
// Keys: 1..K put response #k next in the ranking (the order of the presses is the ranking) and highlight
// it; Backspace takes back the last one; ArrowUp/ArrowDown move the highlighted response; "=" ties the
// highlighted response (the one just placed) with the one above it (projects that allow ties), so
// "4 2 = 3 1" ranks 4 and 2 together first, then 3, then 1. A tie ranks nothing else: the keys after it
// still place the responses they name. Dragging the handle reorders the list.
(function () {
  "use strict";
  const A = window.Arbiter;
  if (!A) return;

  const list = (form) => form.querySelector(".rank-list");
  const items = (form) => Array.from(list(form).querySelectorAll(".rank-item"));
  const select = (li) => li.querySelector("select.rank");
  const rankOf = (li) => (select(li).value ? Number(select(li).value) : null);
  const tiesAllowed = (form) => form.dataset.ties === "1";

  function changed(form) {
    // One event for drafts (sync.js) after the selects changed together.
    form.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function highlight(form, li) {
    items(form).forEach((el) => el.classList.toggle("current", el === li));
  }

  function currentItem(form) {
    const focused = document.activeElement && document.activeElement.closest &&
      document.activeElement.closest(".rank-item");
    return (focused && list(form).contains(focused) && focused) || list(form).querySelector(".rank-item.current");
  }

  // Put the list in rank order: ranked responses first, best first; unranked ones after, in display order.
  // Tied responses keep their places (the sort is stable), so a tie reads in the order it was keyed and
  // Backspace takes back the response placed last.
  function sortByRank(form) {
    const sorted = items(form).sort((a, b) => {
      const ra = rankOf(a), rb = rankOf(b);
      if (ra === null && rb === null) return Number(a.dataset.label) - Number(b.dataset.label);
      return (ra ?? Infinity) - (rb ?? Infinity);
    });
    sorted.forEach((li) => list(form).appendChild(li));
  }

  // Ranks from the list's order, after a move, a drop or a tie: neighbours that shared a rank stay tied
  // unless one of them is the moved response (1, 2, 2, 4: tied ones share the better one). A move or a drop
  // ranks every response; with keepOpen (a tie) unranked responses stay unranked, for the keys to come.
  function ranksFromOrder(form, moved, keepOpen) {
    let rank = 0;
    let previous = null;
    items(form).forEach((li, i) => {
      const own = rankOf(li);
      if (own === null && keepOpen) return;
      const tied = previous && li !== moved && previous.li !== moved && own !== null && own === previous.own;
      if (!tied) rank = i + 1;
      previous = { li: li, own: own };
      select(li).value = String(rank);
    });
    changed(form);
  }

  // The last one left has only one place to go.
  function placeLastOpen(form) {
    const open = items(form).filter((el) => rankOf(el) === null);
    if (open.length === 1) select(open[0]).value = String(items(form).length);
  }

  function place(form, li) {
    // A response already placed (often the last one, placed by itself) is only highlighted, so that "="
    // right after its key ties it, as the key sequence says.
    if (rankOf(li) !== null) {
      highlight(form, li);
      return;
    }
    const ranked = items(form).filter((el) => rankOf(el) !== null).length;
    select(li).value = String(ranked + 1);
    placeLastOpen(form);
    sortByRank(form);
    highlight(form, li);
    changed(form);
  }

  function undo(form) {
    const ranked = items(form).filter((el) => rankOf(el) !== null);
    if (!ranked.length) return;
    // The worst-ranked response is the one placed last.
    const last = ranked.reduce((a, b) => (rankOf(b) >= rankOf(a) ? b : a));
    select(last).value = "";
    sortByRank(form);
    const next = items(form).filter((el) => rankOf(el) !== null).pop();
    highlight(form, next || items(form)[0]);
    changed(form);
  }

  function move(form, li, delta) {
    const all = items(form);
    const i = all.indexOf(li);
    const j = i + delta;
    if (j < 0 || j >= all.length) return;
    if (delta < 0) all[j].before(li);
    else all[j].after(li);
    ranksFromOrder(form, li);
    highlight(form, li);
    li.scrollIntoView({ block: "nearest" });
    if (list(form).contains(document.activeElement)) li.focus({ preventScroll: true });
  }

  function tieWithAbove(form, li) {
    const all = items(form);
    const i = all.indexOf(li);
    // Only a placed response can be tied with; nothing is ranked on the tie's behalf.
    if (i <= 0 || !tiesAllowed(form) || rankOf(all[i - 1]) === null) return;
    select(li).value = select(all[i - 1]).value;
    placeLastOpen(form);
    // Keep later responses after the group, and their own ties.
    ranksFromOrder(form, null, true);
    sortByRank(form);
    highlight(form, li);
  }

  A.keys.ranking = function (event, form) {
    const key = event.key;
    const li = currentItem(form) || items(form)[0];
    if (/^[1-9]$/.test(key)) {
      const target = list(form).querySelector('.rank-item[data-label="' + key + '"]');
      if (!target) return false;
      place(form, target);
      return true;
    }
    if (key === "Backspace") {
      undo(form);
      return true;
    }
    if (key === "ArrowUp" || key === "ArrowDown") {
      if (!li) return false;
      // Moving makes a full ranking: whatever is unranked takes its place in the list as it stands.
      move(form, li, key === "ArrowUp" ? -1 : 1);
      return true;
    }
    if (key === "=" && tiesAllowed(form)) {
      if (li) tieWithAbove(form, li);
      return true;
    }
    return false;
  };

  A.validators.ranking = function (form) {
    if (tiesAllowed(form)) return null;
    const ranks = items(form).map(rankOf).filter((r) => r !== null);
    if (new Set(ranks).size !== ranks.length) {
      return "Two responses share a rank; this project does not allow ties.";
    }
    return null;
  };

  // --- mouse: the selects, clicks and dragging -----------------------------------------------------

  // Remember each select's value, so a changed one can trade places with the response that had its rank.
  function rememberRanks(form) {
    items(form).forEach((li) => { select(li).dataset.previous = select(li).value; });
  }

  document.addEventListener("change", function (event) {
    if (!event.target.matches || !event.target.matches("#task form.judge .rank-list select.rank")) return;
    const form = event.target.closest("form.judge");
    const li = event.target.closest(".rank-item");
    if (!tiesAllowed(form) && event.target.value) {
      const other = items(form).find((el) => el !== li && select(el).value === event.target.value);
      if (other) select(other).value = event.target.dataset.previous || "";
    }
    sortByRank(form);
    highlight(form, li);
  });
  document.addEventListener("change", function (event) {
    const form = event.target.closest && event.target.closest("#task form.judge[data-kind=ranking]");
    if (form) rememberRanks(form);
  });

  document.addEventListener("click", function (event) {
    const li = event.target.closest && event.target.closest("#task .rank-item");
    if (li) highlight(li.closest("form.judge"), li);
  });
  document.addEventListener("focusin", function (event) {
    const li = event.target.closest && event.target.closest("#task .rank-item");
    if (li) highlight(li.closest("form.judge"), li);
  });

  let dragged = null;

  document.addEventListener("dragstart", function (event) {
    const handle = event.target.closest && event.target.closest("#task .rank-item .handle");
    if (!handle) return;
    dragged = handle.closest(".rank-item");
    dragged.classList.add("dragging");
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", dragged.dataset.response);
    event.dataTransfer.setDragImage(dragged, 20, 20);
  });

  document.addEventListener("dragover", function (event) {
    if (!dragged) return;
    const over = event.target.closest && event.target.closest(".rank-item");
    if (!over || !over.parentNode.contains(dragged)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    if (over === dragged) return;
    const box = over.getBoundingClientRect();
    if (event.clientY < box.top + box.height / 2) over.before(dragged);
    else over.after(dragged);
  });

  document.addEventListener("drop", function (event) {
    if (dragged && event.target.closest && event.target.closest(".rank-list")) event.preventDefault();
  });

  document.addEventListener("dragend", function () {
    if (!dragged) return;
    const form = dragged.closest("form.judge");
    dragged.classList.remove("dragging");
    if (form) {
      ranksFromOrder(form, dragged);
      highlight(form, dragged);
    }
    dragged = null;
  });

  function setUp(task) {
    const form = task.querySelector("form.judge[data-kind=ranking]");
    if (!form) return;
    sortByRank(form);
    rememberRanks(form);
    highlight(form, items(form)[0]);
  }

  A.onTaskShown(setUp);
  document.addEventListener("arbiter:restored", function () {
    const task = A.taskEl();
    if (task) setUp(task);
  });
})();
