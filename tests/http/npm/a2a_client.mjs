// Drives one OpenFANG agent over A2A with the official JavaScript SDK (@a2a-js/sdk); prints JSON lines.
// usage: node a2a_client.mjs <agent base url, e.g. http://127.0.0.1:8470/a2a/greeter> <text>
import { ClientFactory } from "@a2a-js/sdk/client";
import { Role } from "@a2a-js/sdk";
import { randomUUID } from "node:crypto";

const [url, text] = process.argv.slice(2);
// The card path resolves against the base like a relative URL: the base must end with "/".
const client = await new ClientFactory().createFromUrl(url.endsWith("/") ? url : `${url}/`);
const message = () => ({
  messageId: randomUUID(), contextId: "", taskId: "", role: Role.ROLE_USER,
  parts: [{ content: { $case: "text", value: text }, metadata: undefined, filename: "", mediaType: "" }],
  metadata: undefined, extensions: [], referenceTaskIds: [],
});
const request = () => ({ tenant: "", message: message(), configuration: undefined, metadata: undefined });
const textOf = (parts) => parts.map((p) => (p.content?.$case === "text" ? p.content.value : "")).join("");

const result = await client.sendMessage(request());
const task = await client.getTask({ tenant: "", id: result.id, historyLength: undefined });
console.log(JSON.stringify({ step: "send", state: task.status.state, reply: textOf(task.artifacts[0].parts) }));

const events = [];
for await (const event of client.sendMessageStream(request())) {
  const p = event.payload;
  if (p?.$case === "statusUpdate") events.push({ kind: "status", state: p.value.status.state });
  else if (p?.$case === "artifactUpdate") events.push({ kind: "artifact", text: textOf(p.value.artifact.parts), append: p.value.append });
  else if (p) events.push({ kind: p.$case });
}
console.log(JSON.stringify({ step: "stream", events }));
