// Taskwire console: submit tasks over HTTP and follow them over graphql-transport-ws.
// Plain browser JavaScript with no dependency and no build step: the page's Content-Security-
// Policy allows scripts from this origin only, and nothing here ever writes HTML (text only),
// so a task's input or result can never become markup.
"use strict";

(() => {
  const ENDPOINT = new URL("/graphql", window.location.href);
  const SOCKET_URL = (() => {
    const url = new URL(ENDPOINT);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  })();
  const TOKEN_KEY = "taskwire.console.token"; // sessionStorage: gone with the tab
  const RECENT_KEY = "taskwire.console.recent"; // localStorage: task ids, newest first
  const RECENT_LIMIT = 20;
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  // Backoff for websocket reconnects: doubled per failed try, capped, with jitter so that
  // many pages do not come back at the same instant after a restart.
  const RECONNECT_FIRST_MS = 500;
  const RECONNECT_MAX_MS = 15000;
  // Closes that a reconnect with the same token cannot fix (bad frames, refused token, token
  // expired): wait for a new token instead of hammering the server.
  const FATAL_CLOSES = new Set([4400, 4401, 4403, 4409, 4429]);

  const TASK_FIELDS = `fragment TaskFields on Task {
    id status inputData result error attempts attemptLimit version
    createdAt updatedAt startedAt finishedAt
  }`;
  const CREATE_TASK = `mutation CreateTask($input: CreateTaskInput!) {
    createTask(input: $input) { ...TaskFields }
  } ${TASK_FIELDS}`;
  const READ_TASK = `query Task($id: ID!) { task(id: $id) { ...TaskFields } } ${TASK_FIELDS}`;
  const WATCH_TASK = `subscription Watch($id: ID!) {
    taskUpdated(id: $id) { ...TaskFields }
  } ${TASK_FIELDS}`;

  // ---- storage (either may be unavailable, e.g. disabled cookies: the page still works) ----

  function readStorage(storage, key) {
    try {
      return storage.getItem(key);
    } catch {
      return null;
    }
  }

  function writeStorage(storage, key, value) {
    try {
      if (value === null) storage.removeItem(key);
      else storage.setItem(key, value);
    } catch {
      // Nothing to do: the value lives as long as the page.
    }
  }

  function token() {
    return readStorage(window.sessionStorage, TOKEN_KEY) || "";
  }

  function recentIds() {
    try {
      const ids = JSON.parse(readStorage(window.localStorage, RECENT_KEY) || "[]");
      return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
    } catch {
      return [];
    }
  }

  function saveRecentIds(ids) {
    writeStorage(window.localStorage, RECENT_KEY, JSON.stringify(ids.slice(0, RECENT_LIMIT)));
  }

  function rememberId(id) {
    saveRecentIds([id, ...recentIds().filter((known) => known !== id)]);
  }

  function forgetId(id) {
    saveRecentIds(recentIds().filter((known) => known !== id));
  }

  // ---- errors: every GraphQL error is shown with its message and extensions.code ----

  class GraphQLFailure extends Error {
    constructor(errors) {
      super(errors.map((error) => error.message).join("; "));
      this.errors = errors;
    }
  }

  function clientError(message, code) {
    return new GraphQLFailure([{ message, extensions: { code } }]);
  }

  function errorsOf(failure) {
    if (failure instanceof GraphQLFailure) return failure.errors;
    return [{ message: String(failure && failure.message ? failure.message : failure) }];
  }

  const errorsBox = () => document.getElementById("errors");

  function showErrors(context, errors) {
    const box = errorsBox();
    box.replaceChildren();
    const heading = document.createElement("p");
    heading.textContent = context;
    const list = document.createElement("ul");
    for (const error of errors) {
      const item = document.createElement("li");
      item.className = "error";
      const extensions = error && typeof error.extensions === "object" ? error.extensions : {};
      const code = document.createElement("strong");
      code.className = "error-code";
      code.textContent = extensions.code || "ERROR";
      const message = document.createElement("span");
      message.className = "error-message";
      message.textContent = ` ${error && error.message ? error.message : "Unknown error"}`;
      item.append(code, message);
      // The rest (retryAfter, requestId, status...) helps whoever reads the server's logs.
      const details = Object.entries(extensions).filter(([key]) => key !== "code");
      if (details.length > 0) {
        const extra = document.createElement("span");
        extra.className = "error-details";
        extra.textContent = ` (${details
          .map(([key, value]) => `${key}: ${JSON.stringify(value)}`)
          .join(", ")})`;
        item.append(extra);
      }
      list.append(item);
    }
    box.append(heading, list);
  }

  function clearErrors() {
    errorsBox().replaceChildren();
  }

  // ---- HTTP ----

  async function graphql(query, variables) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    let response;
    try {
      response = await fetch(ENDPOINT, {
        method: "POST",
        headers,
        body: JSON.stringify({ query, variables }),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      throw clientError(`Cannot reach the API: ${error.message}`, "NETWORK_ERROR");
    }
    let body;
    try {
      body = await response.json();
    } catch {
      throw clientError(`HTTP ${response.status} ${response.statusText}`, `HTTP_${response.status}`);
    }
    // 401, 413, 429... carry the GraphQL error shape too.
    if (body && Array.isArray(body.errors) && body.errors.length > 0) {
      throw new GraphQLFailure(body.errors);
    }
    if (!response.ok || !body || typeof body.data !== "object") {
      throw clientError(`HTTP ${response.status} ${response.statusText}`, `HTTP_${response.status}`);
    }
    return body.data;
  }

  // ---- websocket: a small graphql-transport-ws client ----

  class LiveClient {
    constructor(onState, onReconnected, onRefused) {
      this.onState = onState;
      this.onReconnected = onReconnected;
      this.onRefused = onRefused;
      this.operations = new Map(); // id -> {payload, sink}
      this.nextId = 1;
      this.socket = null;
      this.acknowledged = false;
      this.failures = 0; // consecutive connections that ended before or without an ack
      this.everConnected = false;
      this.retryTimer = null;
      this.refused = false; // a fatal close: wait for restart() (a new token)
    }

    subscribe(query, variables, sink) {
      const id = String(this.nextId++);
      const operation = { payload: { query, variables }, sink };
      this.operations.set(id, operation);
      if (this.acknowledged) this.send({ id, type: "subscribe", payload: operation.payload });
      else this.connect();
      return id;
    }

    unsubscribe(id) {
      if (!this.operations.delete(id)) return;
      if (this.acknowledged) this.send({ id, type: "complete" });
      this.closeIfIdle();
    }

    // A new token: reconnect at once and subscribe everything again.
    restart() {
      this.refused = false;
      this.failures = 0;
      this.drop(1000, "New token");
      if (this.operations.size > 0) this.connect();
    }

    connect() {
      if (this.socket !== null || this.refused || this.retryTimer !== null) return;
      let socket;
      try {
        socket = new WebSocket(SOCKET_URL, "graphql-transport-ws");
      } catch (error) {
        this.onRefused(clientError(`Cannot open a websocket: ${error.message}`, "NETWORK_ERROR"));
        return;
      }
      this.socket = socket;
      this.acknowledged = false;
      this.onState("connecting");
      socket.onopen = () => {
        const bearer = token();
        // Browsers cannot set headers on a websocket: the token goes in connection_init,
        // where the server looks for it.
        this.send({
          type: "connection_init",
          payload: bearer ? { Authorization: `Bearer ${bearer}` } : {},
        });
      };
      socket.onmessage = (event) => {
        if (socket === this.socket) this.receive(event.data);
      };
      socket.onclose = (event) => {
        if (socket === this.socket) this.closed(event);
      };
    }

    send(message) {
      if (this.socket !== null && this.socket.readyState === WebSocket.OPEN) {
        this.socket.send(JSON.stringify(message));
      }
    }

    receive(data) {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        this.drop(4400, "Invalid message");
        return;
      }
      const operation = message.id === undefined ? undefined : this.operations.get(message.id);
      switch (message.type) {
        case "connection_ack": {
          this.acknowledged = true;
          this.failures = 0;
          this.onState("live");
          for (const [id, { payload }] of this.operations) {
            this.send({ id, type: "subscribe", payload });
          }
          // Whatever happened while the socket was down is re-read (the subscriptions also
          // start with the current state, but a task that finished meanwhile is read here).
          if (this.everConnected) this.onReconnected();
          this.everConnected = true;
          this.closeIfIdle(); // everything ended while connecting
          break;
        }
        case "ping":
          this.send({ type: "pong" });
          break;
        case "next":
          if (operation) operation.sink.next(message.payload);
          break;
        case "error":
          if (operation) {
            this.operations.delete(message.id);
            operation.sink.error(Array.isArray(message.payload) ? message.payload : []);
            this.closeIfIdle();
          }
          break;
        case "complete":
          if (operation) {
            this.operations.delete(message.id);
            operation.sink.complete();
            this.closeIfIdle();
          }
          break;
        default:
          break; // pong and anything newer
      }
    }

    closed(event) {
      const acknowledged = this.acknowledged;
      this.socket = null;
      this.acknowledged = false;
      if (this.operations.size === 0) {
        this.onState("idle");
        return;
      }
      if (FATAL_CLOSES.has(event.code)) {
        this.refused = true;
        this.onState("refused");
        const reason = event.reason || "no reason given";
        const hint = event.code === 4403 ? " Check the token, then use it again." : "";
        this.onRefused(
          clientError(
            `The server closed the live connection: ${event.code} ${reason}.${hint}`,
            `WEBSOCKET_${event.code}`,
          ),
        );
        return;
      }
      if (!acknowledged) this.failures += 1;
      const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** this.failures);
      const jittered = delay / 2 + Math.random() * (delay / 2);
      this.onState("reconnecting");
      this.retryTimer = window.setTimeout(() => {
        this.retryTimer = null;
        this.connect();
      }, jittered);
    }

    closeIfIdle() {
      if (this.operations.size === 0) this.drop(1000, "Idle");
    }

    drop(code, reason) {
      if (this.retryTimer !== null) {
        window.clearTimeout(this.retryTimer);
        this.retryTimer = null;
      }
      const socket = this.socket;
      this.socket = null;
      this.acknowledged = false;
      if (socket !== null) socket.close(code, reason);
      this.onState(this.refused ? "refused" : "idle");
    }
  }

  // ---- rendering ----

  function formatTime(value) {
    if (!value) return "—";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
  }

  function formatDuration(milliseconds) {
    if (!Number.isFinite(milliseconds)) return "—";
    const ms = Math.max(0, milliseconds);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const seconds = Math.round(ms / 1000);
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
    return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  }

  const time = (value) => (value ? Date.parse(value) : Number.NaN);

  // Queued: from creation to the (latest) start, or to the end for a task cancelled while
  // pending. Ran: from the start to the end; both keep counting while it is still going.
  function timings(task, now) {
    const created = time(task.createdAt);
    const started = time(task.startedAt);
    const finished = time(task.finishedAt);
    let queuedUntil = started;
    if (Number.isNaN(queuedUntil)) queuedUntil = TERMINAL.has(task.status) ? finished : now;
    let ranUntil = finished;
    if (Number.isNaN(ranUntil)) {
      ranUntil = task.status === "PROCESSING" ? now : time(task.updatedAt);
    }
    return {
      queuedFor: formatDuration(queuedUntil - created),
      ranFor: Number.isNaN(started) ? "—" : formatDuration(ranUntil - started),
    };
  }

  function shortId(id) {
    return id.length > 8 ? `${id.slice(0, 8)}…` : id;
  }

  function announce(text) {
    const announcer = document.getElementById("announcer");
    const line = document.createElement("p");
    line.textContent = text;
    announcer.append(line);
    while (announcer.childElementCount > 5) announcer.firstElementChild.remove();
  }

  // ---- tasks on the page ----

  class TaskList {
    constructor(live) {
      this.live = live;
      this.entries = new Map(); // id -> {task, element, operation}
      this.list = document.getElementById("tasks");
      this.template = document.getElementById("task-template");
    }

    show(task, { atTop }) {
      let entry = this.entries.get(task.id);
      if (entry === undefined) {
        const element = this.template.content.firstElementChild.cloneNode(true);
        element.dataset.taskId = task.id;
        entry = { task: null, element, operation: null };
        this.entries.set(task.id, entry);
        if (atTop) this.list.prepend(element);
        else this.list.append(element);
      } else if (atTop) {
        this.list.prepend(entry.element);
      }
      this.update(entry, task);
      this.refreshEmpty();
      return entry;
    }

    // Versions only go forward: an HTTP read and the subscription can race.
    update(entry, task) {
      const previous = entry.task;
      if (previous !== null && task.version < previous.version) return;
      entry.task = task;
      this.render(entry);
      if (previous !== null && previous.status !== task.status) {
        let text = `Task ${shortId(task.id)} is now ${task.status}`;
        if (task.status === "COMPLETED") text += `: ${task.result}`;
        if (task.status === "FAILED") text += `: ${task.error}`;
        announce(text);
      }
    }

    render(entry) {
      const { task, element } = entry;
      const field = (name) => element.querySelector(`[data-field="${name}"]`);
      element.dataset.status = task.status;
      field("status").textContent = task.status;
      field("status").dataset.status = task.status;
      field("id").textContent = task.id;
      field("inputData").textContent = task.inputData;
      field("result").textContent = task.result ?? "—";
      field("error").textContent = task.error ?? "—";
      const limit = typeof task.attemptLimit === "number" ? ` / ${task.attemptLimit}` : "";
      field("attempts").textContent = `${task.attempts}${limit}`;
      for (const name of ["createdAt", "startedAt", "finishedAt"]) {
        field(name).textContent = formatTime(task[name]);
        field(name).title = task[name] || "";
      }
      field("version").textContent = String(task.version);
      this.renderTimings(entry, Date.now());
    }

    renderTimings(entry, now) {
      const { queuedFor, ranFor } = timings(entry.task, now);
      entry.element.querySelector('[data-field="queuedFor"]').textContent = queuedFor;
      entry.element.querySelector('[data-field="ranFor"]').textContent = ranFor;
    }

    tick() {
      const now = Date.now();
      for (const entry of this.entries.values()) {
        if (entry.task !== null && !TERMINAL.has(entry.task.status)) this.renderTimings(entry, now);
      }
    }

    watch(id) {
      const entry = this.entries.get(id);
      if (entry === undefined || entry.operation !== null || TERMINAL.has(entry.task.status)) {
        return;
      }
      const failed = (errors) => {
        if (errors.some((error) => error.extensions && error.extensions.code === "NOT_FOUND")) {
          this.drop(id); // gone, or not this token's to see
        }
        showErrors(`Following task ${shortId(id)} failed.`, errors);
      };
      entry.operation = this.live.subscribe(WATCH_TASK, { id }, {
        // Errors while running come in `next`, errors before it in `error`.
        next: (payload) => {
          if (payload && Array.isArray(payload.errors) && payload.errors.length > 0) {
            failed(payload.errors);
          }
          const task = payload && payload.data ? payload.data.taskUpdated : null;
          if (task && this.entries.get(id) === entry) this.update(entry, task);
        },
        error: (errors) => {
          entry.operation = null;
          failed(errors);
        },
        complete: () => {
          entry.operation = null;
        },
      });
    }

    drop(id) {
      const entry = this.entries.get(id);
      forgetId(id);
      if (entry === undefined) return;
      if (entry.operation !== null) this.live.unsubscribe(entry.operation);
      entry.element.remove();
      this.entries.delete(id);
      this.refreshEmpty();
    }

    clear() {
      for (const id of [...this.entries.keys()]) this.drop(id);
      saveRecentIds([]);
    }

    // Off the page, still remembered (before loading them again with another token).
    unload() {
      for (const entry of this.entries.values()) {
        if (entry.operation !== null) this.live.unsubscribe(entry.operation);
        entry.element.remove();
      }
      this.entries.clear();
      this.refreshEmpty();
    }

    refreshEmpty() {
      document.getElementById("no-tasks").hidden = this.entries.size > 0;
    }

    // Re-read every task shown (after a reconnect): what finished meanwhile is shown finished.
    async reread() {
      await Promise.all(
        [...this.entries.keys()].map(async (id) => {
          try {
            const data = await graphql(READ_TASK, { id });
            const entry = this.entries.get(id);
            if (data.task === null) this.drop(id);
            else if (entry !== undefined) this.update(entry, data.task);
          } catch (failure) {
            showErrors(`Reading task ${shortId(id)} failed.`, errorsOf(failure));
          }
        }),
      );
    }

    // The ids kept for this origin, read again in their order; the ones that are gone or not
    // visible with this token (null) are forgotten, the ones that failed to load are kept.
    async load() {
      const ids = recentIds();
      const results = await Promise.allSettled(ids.map((id) => graphql(READ_TASK, { id })));
      const failures = [];
      results.forEach((result, index) => {
        const id = ids[index];
        if (result.status === "rejected") {
          failures.push(...errorsOf(result.reason));
        } else if (result.value.task === null) {
          this.drop(id);
        } else {
          this.show(result.value.task, { atTop: false });
          this.watch(id);
        }
      });
      if (failures.length > 0) {
        const seen = new Set();
        const distinct = failures.filter((error) => {
          const key = `${error.extensions && error.extensions.code}|${error.message}`;
          return !seen.has(key) && seen.add(key);
        });
        showErrors("Loading the recent tasks failed.", distinct);
      }
      this.refreshEmpty();
    }
  }

  // ---- wiring ----

  function setLiveState(state) {
    const element = document.getElementById("live-state");
    element.dataset.state = state;
    element.textContent = state;
  }

  function start() {
    const tokenInput = document.getElementById("token");
    tokenInput.value = token();
    let tasks = null;
    const live = new LiveClient(
      setLiveState,
      () => tasks.reread(),
      (failure) => showErrors("Live updates stopped.", errorsOf(failure)),
    );
    tasks = new TaskList(live);

    document.getElementById("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      writeStorage(window.sessionStorage, TOKEN_KEY, tokenInput.value.trim() || null);
      changedToken();
    });
    document.getElementById("token-clear").addEventListener("click", () => {
      tokenInput.value = "";
      writeStorage(window.sessionStorage, TOKEN_KEY, null);
      changedToken();
    });
    // The tasks this token may see (not the last one's) are listed again, and followed on a
    // connection that carries the new token.
    function changedToken() {
      clearErrors();
      tasks.unload();
      live.restart();
      tasks.load();
    }

    const form = document.getElementById("submit-form");
    const input = document.getElementById("input-data");
    const key = document.getElementById("idempotency-key");
    const button = document.getElementById("submit-button");
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const taskInput = { inputData: input.value };
      if (key.value.trim()) taskInput.idempotencyKey = key.value.trim();
      button.disabled = true;
      form.setAttribute("aria-busy", "true");
      try {
        const data = await graphql(CREATE_TASK, { input: taskInput });
        const task = data.createTask;
        clearErrors();
        rememberId(task.id);
        tasks.show(task, { atTop: true });
        announce(`Task ${shortId(task.id)} created: ${task.status}`);
        tasks.watch(task.id);
      } catch (failure) {
        showErrors("Creating the task failed.", errorsOf(failure));
      } finally {
        button.disabled = false;
        form.removeAttribute("aria-busy");
      }
    });

    document.getElementById("clear-tasks").addEventListener("click", () => tasks.clear());
    window.setInterval(() => tasks.tick(), 1000);
    tasks.load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
