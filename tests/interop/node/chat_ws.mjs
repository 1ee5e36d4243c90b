// ConvexClient (WebSocket) against examples/chat: a subscription sees another client's write,
// and a client's own mutation is visible to it as soon as the mutation resolves.
// usage: node chat_ws.mjs <url>

import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";
import { observe, recorder, rejection, requireArgs, run, step, wsClientOptions } from "./common.mjs";

const api = anyApi;
const bodies = (list) => list.map((m) => m.body);

run(async (argv) => {
  const [url] = requireArgs(argv, ["url"]);
  const watcher = new ConvexClient(url, wsClientOptions);
  const writer = new ConvexClient(url, wsClientOptions);
  try {
    step("subscribing to messages:list");
    const updates = recorder();
    const sub = watcher.onUpdate(api.messages.list, {}, (r) => updates.push(r), (e) => updates.fail(e));
    observe("initial", await updates.waitFor(() => true));

    step("another client sends a message; waiting for the subscription to see it");
    observe("otherClientSend", await writer.mutation(api.messages.send, { author: "writer", body: "from another client" }));
    observe("afterOtherClient", await updates.waitFor((list) => bodies(list).includes("from another client")));

    step("the subscribed client sends its own message");
    await watcher.mutation(api.messages.send, { author: "watcher", body: "my own write" });
    // Read-your-writes: once mutation() resolves, the client's view already holds the write.
    observe("currentValueAfterOwnWrite", sub.getCurrentValue());
    step("query on the subscribed client after its own write");
    observe("queryAfterOwnWrite", await watcher.query(api.messages.list, {}));

    step("the writer (no subscriptions) sends and then queries");
    await writer.mutation(api.messages.send, { author: "writer", body: "writer again" });
    observe("writerQueryAfterOwnWrite", await writer.query(api.messages.list, {}));

    step("waiting for the subscription to see the writer's second message");
    observe("subscriptionFinal", await updates.waitFor((list) => bodies(list).includes("writer again")));

    step("a mutation whose arguments fail validation");
    observe("wrongType", await rejection(watcher.mutation(api.messages.send, { author: "watcher", body: 42 })));

    step("a query of a function that does not exist");
    observe("unknownQuery", await rejection(watcher.query(api.messages.nope, {})));

    step("the subscription still works after the failures");
    await writer.mutation(api.messages.send, { author: "writer", body: "still alive" });
    await updates.waitFor((list) => bodies(list).includes("still alive"));
    observe("subscriptionErrors", updates.errors);
    observe("updateCount", updates.results.length);
    sub.unsubscribe();
  } finally {
    step("closing the clients");
    await Promise.all([watcher.close(), writer.close()]);
  }
  return {};
});
