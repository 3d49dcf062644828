// One grpc-web call as a browser client makes it, through Connect's grpc-web transport (binary
// protobuf, HTTP/1.1), with the service and its messages taken at run time from a descriptor set
// compiled from proto/ (tests/python/conftest.py writes it). Driven by
// tests/python/test_browser_access.py:
//
//   node call.mjs DESCRIPTORS BASE_URL SERVICE METHOD REQUEST_JSON [API_KEY]
//
// prints one JSON object: `messages` (each answer, proto JSON; several for a server stream) and
// `error` (`{code, message}` from the call's grpc-status, or null).

import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary, fromJson, toJson } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-node";

const [descriptors, baseUrl, serviceName, methodName, requestJson, apiKey] = process.argv.slice(2);

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptors)));
const service = registry.getService(serviceName);
if (!service) throw new Error(`no service ${serviceName} in ${descriptors}`);
const method = service.methods.find((m) => m.name === methodName);
if (!method) throw new Error(`no method ${methodName} in ${serviceName}`);

const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
const client = createClient(service, transport);
const headers = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
const request = fromJson(method.input, JSON.parse(requestJson), { registry });

const messages = [];
let error = null;
try {
  if (method.methodKind === "server_streaming") {
    for await (const answer of client[method.localName](request, { headers, timeoutMs: 30_000 })) {
      messages.push(toJson(method.output, answer, { registry }));
    }
  } else {
    const answer = await client[method.localName](request, { headers, timeoutMs: 30_000 });
    messages.push(toJson(method.output, answer, { registry }));
  }
} catch (e) {
  const err = ConnectError.from(e);
  error = { code: Code[err.code], message: err.rawMessage };
}
process.stdout.write(`${JSON.stringify({ messages, error })}\n`);
