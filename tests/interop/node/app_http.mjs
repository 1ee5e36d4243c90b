// ConvexHttpClient against tests/fixtures/app: ConvexError data from mutations and actions,
// actions, value round trips, and admin auth for internal functions.
// usage: node app_http.mjs <url> <adminKey>

import { ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { httpClientOptions, observe, rejection, requireArgs, run, step } from "./common.mjs";

const api = anyApi;

/** An id of the same table as `id` that names no document (its last base32 digit changed). */
function absentIdLike(id) {
  const last = id[id.length - 1];
  return id.slice(0, -1) + (last === "a" ? "b" : "a");
}

run(async (argv) => {
  const [url, adminKey] = requireArgs(argv, ["url", "adminKey"]);
  const client = new ConvexHttpClient(url, httpClientOptions);

  step("mutation rooms:create");
  const roomId = observe("roomId", await client.mutation(api.rooms.create, { name: "lobby" }));

  step("mutation rooms:post");
  observe("postedId", await client.mutation(api.rooms.post, { room_id: roomId, author: "ann", body: "hi" }));

  step("query rooms:latest");
  observe("latest", await client.query(api.rooms.latest, { room_id: roomId, count: 5 }));

  step("mutation rooms:post to a room that does not exist");
  const missingRoomId = observe("missingRoomId", absentIdLike(roomId));
  observe("noSuchRoom", await rejection(client.mutation(api.rooms.post, { room_id: missingRoomId, author: "ann", body: "lost" })));

  step("mutation rooms:post_then_fail");
  observe("postThenFail", await rejection(client.mutation(api.rooms.post_then_fail, { room_id: roomId })));
  observe("latestAfterFailure", await client.query(api.rooms.latest, { room_id: roomId }));

  step("action misc:double_post");
  observe("actionResult", await client.action(api.misc.double_post, { owner: "npm" }));

  step("action misc:fail_action");
  observe("actionError", await rejection(client.action(api.misc.fail_action, {})));

  step("query misc:echo with an int64, bytes and a float");
  const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]).buffer;
  observe("echo", await client.query(api.misc.echo, { value: { big: 2n ** 53n + 1n, bytes, ratio: 0.5 } }));

  step("query rooms:count_all without admin auth");
  observe("internalWithoutAdmin", await rejection(client.query(api.rooms.count_all, {})));

  step("setAdminAuth, then the internal rooms:count_all and rooms:secret_post");
  const admin = new ConvexHttpClient(url, httpClientOptions);
  admin.setAdminAuth(adminKey);
  observe("adminCountBefore", await admin.query(api.rooms.count_all, {}));
  observe("adminSecretPost", await admin.mutation(api.rooms.secret_post, { room_id: roomId, body: "from admin" }));
  observe("adminCountAfter", await admin.query(api.rooms.count_all, {}));
  observe("latestAfterAdmin", await client.query(api.rooms.latest, { room_id: roomId }));

  step("setAdminAuth with a wrong key");
  const impostor = new ConvexHttpClient(url, httpClientOptions);
  impostor.setAdminAuth("not-the-admin-key");
  observe("wrongAdminKey", await rejection(impostor.query(api.rooms.count_all, {})));
  return {};
});
