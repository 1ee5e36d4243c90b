// Shared helpers for the interop scripts: a bounded run, JSON-safe observations, error capture.
//
// Every script calls run(main): main(argv) returns an object of observations, printed as one
// JSON line on stdout (exit 0). Any uncaught failure, or the overall deadline passing, prints
// the failure and the step the script was at on stderr and exits non-zero.

import { ConvexError } from "convex/values";
import WebSocket from "ws";

let currentStep = "starting";
const observed = {};

/** Record which step the script is at, so a timeout says what it was waiting for. */
export function step(name) {
  currentStep = name;
}

/** Logs of the convex clients go to stderr so stdout carries only the JSON line. */
export const stderrLogger = {
  logVerbose: () => {},
  log: (...args) => console.error("[convex log]", ...args),
  warn: (...args) => console.error("[convex warn]", ...args),
  error: (...args) => console.error("[convex error]", ...args),
};

/** Options for the WebSocket ConvexClient in Node 20 against a self-hosted URL. */
export const wsClientOptions = {
  webSocketConstructor: WebSocket,
  skipConvexDeploymentUrlCheck: true,
  logger: stderrLogger,
};

/** Options for ConvexHttpClient against a self-hosted URL. */
export const httpClientOptions = {
  skipConvexDeploymentUrlCheck: true,
  logger: stderrLogger,
};

/** Convex values → JSON: bigint as {"$bigint": "<decimal>"}, ArrayBuffer as {"$bytes": base64}. */
export function toJson(value) {
  return JSON.parse(
    JSON.stringify(value, (_key, v) => {
      if (typeof v === "bigint") return { $bigint: v.toString() };
      if (v instanceof ArrayBuffer) return { $bytes: Buffer.from(v).toString("base64") };
      return v;
    }),
  );
}

/** What a user would see of a rejected call. */
export function describeError(error) {
  return {
    name: error?.name ?? null,
    isConvexError: error instanceof ConvexError,
    message: String(error?.message ?? error),
    data: error instanceof ConvexError ? toJson(error.data) : null,
  };
}

/** Await a promise expected to reject; returns describeError(rejection) or {resolved: value}. */
export async function rejection(promise) {
  try {
    const value = await promise;
    return { resolved: toJson(value ?? null) };
  } catch (error) {
    return describeError(error);
  }
}

/**
 * A subscription recorder: push() every onUpdate result, then waitFor(predicate) resolves with
 * the first recorded result satisfying it (already recorded or yet to come).
 */
export function recorder() {
  const results = [];
  const errors = [];
  let waiters = [];
  const settle = () => {
    waiters = waiters.filter(({ predicate, resolve }) => {
      const found = results.find(predicate);
      if (found !== undefined) {
        resolve(found);
        return false;
      }
      return true;
    });
  };
  return {
    results,
    errors,
    push(value) {
      results.push(value);
      settle();
    },
    fail(error) {
      errors.push(describeError(error));
      console.error("[subscription error]", error);
    },
    waitFor(predicate) {
      return new Promise((resolve) => {
        waiters.push({ predicate, resolve });
        settle();
      });
    },
  };
}

/** Keep an observation so a failure or timeout can print what was seen before it. */
export function observe(key, value) {
  observed[key] = toJson(value ?? null);
  return value;
}

export function run(main, { timeoutMs = 20000 } = {}) {
  const timer = setTimeout(() => {
    console.error(`TIMEOUT after ${timeoutMs} ms while: ${currentStep}`);
    console.error(`observed so far: ${JSON.stringify(observed)}`);
    process.exit(3);
  }, timeoutMs);
  Promise.resolve()
    .then(() => main(process.argv.slice(2)))
    .then(
      (observations) => {
        clearTimeout(timer);
        process.stdout.write(JSON.stringify(toJson({ ...observed, ...observations })) + "\n");
        process.exit(0);
      },
      (error) => {
        clearTimeout(timer);
        console.error(`FAILED while: ${currentStep}`);
        console.error(error?.stack ?? String(error));
        console.error(`observed so far: ${JSON.stringify(observed)}`);
        process.exit(1);
      },
    );
}

export function requireArgs(argv, names) {
  if (argv.length < names.length) {
    throw new Error(`usage: node ${process.argv[1]} ${names.map((n) => `<${n}>`).join(" ")}`);
  }
  return argv;
}
