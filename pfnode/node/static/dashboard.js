// pfnode's live dashboard: polls /dashboard/data once a second and shows it. No framework,
// no build step, nothing loaded from elsewhere. The node sends counts that only grow and
// figures of the moment; rates, CPU shares and recent percentiles are differences of reads.
"use strict";

(() => {
  const POLL_MS = 1000;
  const RATE_WINDOW_S = 5;
  const RECENT_WINDOW_S = 10;
  const SPARK_POINTS = 60;
  const ERROR_NAMES = {
    PF001: "no handler", PF002: "invalid packet", PF003: "no reactor can take it", PF004: "overloaded",
    PF006: "dependency failed", PF007: "no quorum", PF008: "loop exhausted", PF009: "lock busy",
    PF400: "malformed frame", PF401: "unauthenticated", PF403: "forbidden", PF408: "deadline",
    PF409: "duplicate id", PF413: "too large", PF500: "handler raised", PF501: "memory cap",
    PF502: "worker died", PF503: "unavailable", PF504: "remote timeout",
  };

  // The token: ?token= in the page's address, sent as a Bearer header with each read.
  const token = new URLSearchParams(window.location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const reads = [];  // recent reads, oldest first: {t (s, the node's clock), data}
  const spark = [];  // packets/s of the last minute

  const $ = (id) => document.getElementById(id);

  function cell(text, className, field) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (className) td.className = className;
    if (field) td.dataset.field = field;
    return td;
  }

  function fillTable(id, rows, columns, empty) {
    const body = $(id).tBodies[0];
    const fresh = document.createElement("tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = cell(empty, "empty");
      td.colSpan = columns;
      tr.appendChild(td);
      fresh.appendChild(tr);
    }
    for (const row of rows) fresh.appendChild(row);
    body.replaceWith(fresh);
  }

  function row(key, value, cells) {
    const tr = document.createElement("tr");
    if (key) tr.dataset[key] = value;
    for (const td of cells) tr.appendChild(td);
    return tr;
  }

  const fmt = {
    int: (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en")),
    rate: (n) => (n === null || n === undefined ? "–" : n >= 100 ? Math.round(n).toLocaleString("en") : n.toFixed(1)),
    bytes: (n) => {
      if (n === null || n === undefined) return "–";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
      return (i ? n.toFixed(1) : String(n)) + " " + units[i];
    },
    seconds: (s) => {
      if (s === null || s === undefined) return "–";
      if (s < 0.001) return (s * 1e6).toFixed(0) + " µs";
      if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
      return s.toFixed(2) + " s";
    },
    age: (s) => {
      if (s === null || s === undefined) return "–";
      if (s < 120) return Math.round(s) + " s";
      if (s < 7200) return Math.round(s / 60) + " min";
      if (s < 172800) return (s / 3600).toFixed(1) + " h";
      return (s / 86400).toFixed(1) + " d";
    },
  };

  // The read closest to `seconds` ago (at least one read back), or null.
  function readAgo(now, seconds) {
    let found = null;
    for (let i = reads.length - 2; i >= 0; i -= 1) {
      found = reads[i];
      if (now.t - reads[i].t >= seconds) break;
    }
    return found;
  }

  function ended(group) { return group.ok + group.failed + group.cancelled; }

  // A quantile of the packets that arrived between two reads of a cumulative histogram,
  // interpolated inside its bucket as Prometheus' histogram_quantile does.
  function quantile(q, now, then, bounds) {
    const counts = now.map((n, i) => n - (then ? then[i] || 0 : 0));
    const total = counts.reduce((a, b) => a + b, 0);
    if (total <= 0) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i += 1) {
      if (counts[i] > 0 && seen + counts[i] >= rank) {
        if (i >= bounds.length) return bounds[bounds.length - 1];
        const lower = i === 0 ? 0 : bounds[i - 1];
        return lower + (bounds[i] - lower) * ((rank - seen) / counts[i]);
      }
      seen += counts[i];
    }
    return bounds[bounds.length - 1];
  }

  function showSummary(data, rate, total) {
    const node = data.node;
    const status = $("status");
    status.textContent = node.status;
    status.className = "pill " + node.status;
    const endpoint = node.path ? ` · ${node.scheme}://${window.location.host}${node.path}` : " · dialled out";
    $("where").textContent = `pfnode ${node.version} · ${node.transport}${endpoint} · pid ${node.pid} · ` +
      `${node.handlers} handlers`;
    $("updated").textContent = new Date(data.time * 1000).toLocaleTimeString("en-GB");
    $("rate-total").textContent = fmt.rate(rate);
    $("packets-total").textContent = fmt.int(total);
    $("inflight").textContent = fmt.int(node.inflight);
    $("connections").textContent = fmt.int(node.connections);
    const lanes = Object.values(data.lanes).filter((l) => l.workers !== undefined);
    $("busy").textContent = `${lanes.reduce((a, l) => a + l.busy, 0)} / ${lanes.reduce((a, l) => a + l.workers, 0)}`;
    $("queued").textContent = fmt.int(Object.values(data.lanes).reduce((a, l) => a + l.queued, 0));
    $("uptime").textContent = fmt.age(node.uptime_s);
    $("load").textContent = `${node.load_1m} / ${node.usable_cores}`;
  }

  function drawSparkline() {
    const svg = $("sparkline");
    svg.dataset.points = String(spark.length);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (spark.length < 2) return;
    const top = Math.max(...spark, 1);
    const points = spark.map((v, i) => `${(i * 120) / (SPARK_POINTS - 1)},${30 - (v / top) * 28 - 1}`);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#0969da");
    line.setAttribute("stroke-width", "1.5");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }

  function showGroups(data, rateRead, recentRead) {
    const groups = Object.keys(data.groups).sort();
    const rows = groups.map((name) => {
      const g = data.groups[name];
      const before = rateRead && rateRead.data.groups[name];
      const dt = rateRead ? data.time - rateRead.t : 0;
      const rate = dt > 0 ? (ended(g) - (before ? ended(before) : 0)) / dt : null;
      const then = recentRead && recentRead.data.groups[name] ? recentRead.data.groups[name].rtt : null;
      const p = (q) => fmt.seconds(quantile(q, g.rtt, recentRead ? then || [] : null, data.buckets_s));
      return row("group", name, [cell(name, "text"), cell(fmt.int(ended(g)), "", "packets"),
        cell(fmt.rate(rate), "", "rate"), cell(fmt.int(g.ok)), cell(fmt.int(g.failed), g.failed ? "bad" : ""),
        cell(fmt.int(g.cancelled)), cell(p(0.5), "", "p50"), cell(p(0.9), "", "p90"), cell(p(0.99), "", "p99")]);
    });
    fillTable("groups", rows, 9, "no packets yet");
  }

  function showLanes(data) {
    const rows = Object.entries(data.lanes).map(([name, lane]) => {
      const priorities = Object.entries(lane.queued_by_priority)
        .sort((a, b) => Number(b[0]) - Number(a[0])).map(([p, n]) => `p${p}: ${n}`).join("  ");
      const workers = lane.workers === undefined ? null : `${lane.workers}` +
        (lane.target !== lane.workers ? ` (→ ${lane.target})` : "");
      return row("lane", name, [cell(name, "text"), cell(workers, "", "workers"), cell(lane.busy, "", "busy"),
        cell(lane.idle, "", "idle"), cell(lane.held), cell(fmt.int(lane.queued), "", "queued"),
        cell(priorities || "–", "text"), cell(lane.restarts, lane.restarts ? "bad" : "")]);
    });
    fillTable("lanes", rows, 8, "no lanes");
  }

  function showWorkers(data, rateRead) {
    const before = {};
    if (rateRead) for (const w of rateRead.data.workers) before[w.pid] = w;
    const dt = rateRead ? data.time - rateRead.t : 0;
    const rows = data.workers.map((w) => {
      const old = before[w.pid];
      const cpu = old && dt > 0 && w.cpu_s !== undefined ? (100 * (w.cpu_s - old.cpu_s)) / dt : null;
      const rate = old && dt > 0 && w.packets !== null ? (w.packets - old.packets) / dt : null;
      const lane = data.lanes[w.lane];
      return row("pid", String(w.pid), [cell(w.lane, "text"), cell(w.pid), cell(w.state, "text state-" + w.state, "state"),
        cell(cpu === null ? "–" : cpu.toFixed(0) + " %", "", "cpu"), cell(fmt.bytes(w.rss_bytes), "", "rss"),
        cell(w.packets === null ? "–" : fmt.int(w.packets), "", "packets"), cell(fmt.rate(rate)), cell(w.held),
        cell(w.started ? fmt.age(data.time - w.started) : "–"), cell(lane && lane.restarts !== undefined ? lane.restarts : "–")]);
    });
    fillTable("workers", rows, 10, "no workers");
  }

  function showLinks(data) {
    const hub = data.hub;
    const rows = hub.links.map((l) => row("link", l.name, [cell(l.name, "text"), cell(l.peer, "text"),
      cell(l.state, "text state-" + l.state), cell(l.runs.join(", ") + (l.runs_count > l.runs.length ? " …" : ""), "keys"),
      cell(l.holds, "", "holds"), cell(fmt.int(l.answered))]));
    fillTable("links", rows, 6, "no links");
    $("uplink").textContent = hub.uplink ? `dialled out to ${hub.uplink.url} (${hub.uplink.connected ? "connected" : "reconnecting"})`
      : `${hub.reactors} reactors · ${hub.forwarded} forwarded · ${hub.parked} parked`;
  }

  function showElements(data) {
    const kinds = ["subscriptions", "buffers", "locks", "cache"];
    const rows = Object.entries(data.elements.by_principal).sort().map(([who, held]) =>
      row("principal", who, [cell(who, "text"), ...kinds.map((k) => cell(held[k] ?
        `${held[k][0]}` + (k === "locks" ? "" : ` (${fmt.bytes(held[k][1])})`) : "–"))]));
    fillTable("elements", rows, 5, "no principal holds any");
  }

  function showDask(data) {
    const dask = data.dask;
    $("dask-section").hidden = !dask;
    if (!dask) return;
    $("dask-summary").textContent = `${dask.scheduler} · ${dask.state}` + (dask.problem ? ` (${dask.problem})` : "") +
      ` · ${dask.on_cluster} on the cluster, ${dask.queued} queued, window ${dask.window}`;
    const rows = dask.workers.map((w) => {
      const rest = Object.entries(w).filter(([k]) => !["address", "threads", "nthreads", "running"].includes(k))
        .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
      return row("worker", w.address, [cell(w.address, "text"), cell(w.threads ?? w.nthreads), cell(w.running),
        cell(rest, "keys")]);
    });
    fillTable("dask", rows, 4, "no Dask workers");
  }

  function showErrors(data, recentRead) {
    const then = recentRead ? recentRead.data.errors : {};
    const rows = Object.entries(data.errors).map(([code, e]) => {
      const recent = e.total - (then[code] ? then[code].total : 0);
      return row("code", code, [cell(code, "text"), cell(ERROR_NAMES[code] || "", "text"),
        cell(fmt.int(e.total), "", "total"), cell(fmt.int(recent), recent ? "bad" : "", "recent"),
        cell(fmt.int(e.failed)), cell(fmt.int(e.refused)), cell(fmt.int(e.rejected))]);
    });
    fillTable("errors", rows, 7, "no errors");
  }

  function show(data) {
    const now = { t: data.time, data };
    reads.push(now);
    while (reads.length > 2 && now.t - reads[1].t >= RECENT_WINDOW_S) reads.shift();
    const rateRead = readAgo(now, RATE_WINDOW_S);
    const recentRead = readAgo(now, RECENT_WINDOW_S);
    const total = Object.values(data.groups).reduce((a, g) => a + ended(g), 0);
    let rate = null;
    if (rateRead && now.t > rateRead.t) {
      const before = Object.values(rateRead.data.groups).reduce((a, g) => a + ended(g), 0);
      rate = (total - before) / (now.t - rateRead.t);
      spark.push(rate);
      if (spark.length > SPARK_POINTS) spark.shift();
    }
    showSummary(data, rate, total);
    drawSparkline();
    showGroups(data, rateRead, recentRead);
    showLanes(data);
    showWorkers(data, rateRead);
    showLinks(data);
    showElements(data);
    showDask(data);
    showErrors(data, recentRead);
  }

  function problem(text) {
    const box = $("problem");
    box.hidden = !text;
    box.textContent = text || "";
    if (text) {
      $("status").textContent = "unreachable";
      $("status").className = "pill unreachable";
    }
  }

  async function poll() {
    const started = performance.now();
    try {
      const response = await fetch("/dashboard/data", { headers, cache: "no-store" });
      if (response.ok) {
        show(await response.json());
        problem(null);
      } else if (response.status === 401) {
        problem("A token with the admin role is needed: open /dashboard?token=<token>.");
      } else if (response.status === 403) {
        problem("This token does not have the admin role.");
      } else {
        problem(`The node answered ${response.status} ${response.statusText}.`);
      }
    } catch (error) {
      problem(`The node cannot be reached (${error.message}); retrying.`);
    }
    window.setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
  }

  poll();
})();
