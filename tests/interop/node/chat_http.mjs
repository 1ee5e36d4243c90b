// ConvexHttpClient against examples/chat: query, mutation, validation and unknown-function errors.
// usage: node chat_http.mjs <url>

import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { httpClientOptions, observe, rejection, requireArgs, run, step } from "./common.mjs";

const api = anyApi;

run(async (argv) => {
  const [url] = requireArgs(argv, ["url"]);
  const client = new ConvexHttpClient(url, httpClientOptions);

  step("query messages:list on an empty table");
  observe("before", await client.query(api.messages.list, {}));

  step("mutation messages:send (twice)");
  observe("sendResult", await client.mutation(api.messages.send, { author: "alice", body: "hello from npm" }));
  await client.mutation(api.messages.send, { author: "bob", body: "second message" });

  step("query messages:list after the sends");
  observe("after", await client.query(api.messages.list, {}));

  step("mutation messages:send with a number for body");
  observe("wrongType", await rejection(client.mutation(api.messages.send, { author: "alice", body: 42 })));

  step("mutation messages:send without body");
  observe("missingArg", await rejection(client.mutation(api.messages.send, { author: "alice" })));

  step("query messages:nope (no such function)");
  observe("unknownFunction", await rejection(client.query(api.messages.nope, {})));

  step("query nowhere:list (no such module)");
  observe("unknownModule", await rejection(client.query(api.nowhere.list, {})));

  step("mutation messages:list (a query called as a mutation)");
  observe("wrongKind", await rejection(client.mutation(api.messages.list, {})));

  step("query messages:list after the failed calls");
  observe("final", await client.query(api.messages.list, {}));
  return {};
});
