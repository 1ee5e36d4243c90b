// Auth with the official clients against examples/chat: ConvexHttpClient.setAuth(token) and
// ConvexClient.setAuth(fetchToken) with a token minted by the node, then a token it refuses.
// usage: node chat_auth.mjs <url> <token> <bad token>

import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { anyApi } from "convex/server";
import { httpClientOptions, observe, recorder, requireArgs, run, step, wsClientOptions } from "./common.mjs";

const api = anyApi;

run(async (argv) => {
  const [url, token, badToken] = requireArgs(argv, ["url", "token", "bad token"]);

  step("ConvexHttpClient without auth, then with setAuth");
  const http = new ConvexHttpClient(url, httpClientOptions);
  observe("httpAnonymous", await http.query(api.auth.whoami, {}));
  http.setAuth(token);
  observe("httpIdentity", await http.query(api.auth.whoami, {}));
  await http.mutation(api.messages.send, { body: "over http" });

  step("ConvexClient with setAuth: the token goes over the socket in Authenticate");
  const client = new ConvexClient(url, wsClientOptions);
  const bad = new ConvexClient(url, wsClientOptions);
  try {
    const authChanges = [];
    const identities = recorder();
    client.onUpdate(api.auth.whoami, {}, (r) => identities.push(r), (e) => identities.fail(e));
    client.setAuth(async () => token, (isAuthenticated) => authChanges.push(isAuthenticated));
    observe("wsIdentity", await identities.waitFor((value) => value !== null));
    await client.mutation(api.messages.send, { body: "over the socket" });
    observe("messages", await client.query(api.messages.list, {}));
    observe("authChanges", authChanges);

    step("ConvexClient with a token the node refuses");
    const badChanges = [];
    await new Promise((resolve) => {
      bad.setAuth(async () => badToken, (isAuthenticated) => {
        badChanges.push(isAuthenticated);
        if (!isAuthenticated) resolve();
      });
    });
    observe("badAuthChanges", badChanges);
    observe("badIdentity", await bad.query(api.auth.whoami, {}));
  } finally {
    step("closing the clients");
    await Promise.all([client.close(), bad.close()]);
  }
  return {};
});
