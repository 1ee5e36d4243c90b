// ConvexClient (WebSocket) against tests/fixtures/app: actions, ConvexError data from mutations
// and actions, rollback of a failed mutation, value round trips, unknown functions.
// usage: node app_ws.mjs <url>

import { ConvexClient } from "convex/browser";
import { anyApi } from "convex/server";
import { observe, recorder, rejection, requireArgs, run, step, wsClientOptions } from "./common.mjs";

const api = anyApi;

function absentIdLike(id) {
  const last = id[id.length - 1];
  return id.slice(0, -1) + (last === "a" ? "b" : "a");
}

run(async (argv) => {
  const [url] = requireArgs(argv, ["url"]);
  const client = new ConvexClient(url, wsClientOptions);
  try {
    step("mutation rooms:create");
    const roomId = observe("roomId", await client.mutation(api.rooms.create, { name: "ws-room" }));

    step("subscribing to rooms:latest");
    const updates = recorder();
    const sub = client.onUpdate(api.rooms.latest, { room_id: roomId }, (r) => updates.push(r), (e) => updates.fail(e));
    observe("initial", await updates.waitFor(() => true));

    step("mutation rooms:post");
    await client.mutation(api.rooms.post, { room_id: roomId, author: "ann", body: "hello over ws" });
    observe("currentValueAfterPost", sub.getCurrentValue());

    step("mutation rooms:post to a room that does not exist");
    const missingRoomId = observe("missingRoomId", absentIdLike(roomId));
    observe("noSuchRoom", await rejection(client.mutation(api.rooms.post, { room_id: missingRoomId, author: "ann", body: "lost" })));

    step("mutation rooms:post_then_fail");
    observe("postThenFail", await rejection(client.mutation(api.rooms.post_then_fail, { room_id: roomId })));
    observe("latestAfterFailure", await client.query(api.rooms.latest, { room_id: roomId }));

    step("action misc:double_post");
    observe("actionResult", await client.action(api.misc.double_post, { owner: "npm-ws" }));

    step("action misc:fail_action");
    observe("actionError", await rejection(client.action(api.misc.fail_action, {})));

    step("query misc:echo with an int64, bytes and a float");
    const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]).buffer;
    observe("echo", await client.query(api.misc.echo, { value: { big: -(2n ** 60n), bytes, ratio: 0.25 } }));

    step("mutation and action of functions that do not exist");
    observe("unknownMutation", await rejection(client.mutation(api.rooms.nope, {})));
    observe("unknownAction", await rejection(client.action(api.misc.nope, {})));

    step("internal function without admin auth");
    observe("internalWithoutAdmin", await rejection(client.query(api.rooms.count_all, {})));

    observe("subscriptionErrors", updates.errors);
    sub.unsubscribe();
  } finally {
    step("closing the client");
    await client.close();
  }
  return {};
});
