// A js-libp2p peer that speaks hivemesh's protocols, written from docs/protocols.md:
// TCP, the libp2p private network (@libp2p/pnet, the same swarm.key file), Noise, yamux;
// frames are an unsigned LEB128 length and a compact JSON object (§4).
//
//   node peer.mjs '<json options>'
//
// options: {"mode": "dial" | "refused" | "listen" | "watch", "swarmKey": FILE,
//           "seed": 64 hex chars, "node": "/ip4/.../tcp/.../p2p/..." (dial, refused, watch),
//           "workflow": YAML text, "workflowId": id (watch: submitted, then watched, §10.8)}
//
// Every event is printed as one JSON line on stdout; the exit code is 0 when the mode's
// expectation held. "listen" serves discovery until its stdin closes.

import './node20.mjs' // first: before any libp2p module
import { readFileSync } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { preSharedKey } from '@libp2p/pnet'
import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'

const DISCOVERY = '/hivemesh/discovery/0.2.0'
const HANDOFF = '/hivemesh/handoff/1.0.0'
const CONTROL = '/hivemesh/control/0.2.0'
const CONTROL_WATCH = '/hivemesh/control/0.3.0' // watch and heartbeats (§10.8)
const MAX_FRAME = 4 * 1024 * 1024
const TIMEOUT_MS = 15000

const options = JSON.parse(process.argv[2] ?? '{}')

function report (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

// -- framing (§4) -----------------------------------------------------------------------

function encodeUvarint (n) {
  const out = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return Uint8Array.from(out)
}

function encodeFrame (message) {
  const payload = new TextEncoder().encode(JSON.stringify(message))
  const prefix = encodeUvarint(payload.length)
  const frame = new Uint8Array(prefix.length + payload.length)
  frame.set(prefix, 0)
  frame.set(payload, prefix.length)
  return frame
}

// Returns {message, used} for a complete frame at the start of buf, or null if more bytes
// are needed. Throws on a bad varint (non-minimal, over 9 bytes), zero length or an
// oversized frame, as a compatible receiver must.
function decodeFrame (buf) {
  let length = 0
  let scale = 1
  for (let i = 0; i < buf.length; i++) {
    if (i >= 9) throw new Error('varint longer than 9 bytes')
    const byte = buf[i]
    length += (byte & 0x7f) * scale
    scale *= 128
    if ((byte & 0x80) === 0) {
      if (i > 0 && byte === 0) throw new Error('non-minimal varint')
      if (length === 0) throw new Error('zero-length frame')
      if (length > MAX_FRAME) throw new Error(`frame of ${length} bytes is too large`)
      const start = i + 1
      if (buf.length < start + length) return null
      const text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(start, start + length))
      const message = JSON.parse(text)
      if (typeof message !== 'object' || message === null || typeof message.type !== 'string') {
        throw new Error('a frame that is not an object with a string "type"')
      }
      return { message, used: start + length }
    }
  }
  return null
}

class FrameStream {
  constructor (stream) {
    this.stream = stream
    this.chunks = stream[Symbol.asyncIterator]()
    this.buf = new Uint8Array(0)
  }

  async send (message) {
    if (!this.stream.send(encodeFrame(message))) {
      await this.stream.onDrain({ signal: AbortSignal.timeout(TIMEOUT_MS) })
    }
  }

  // The next message, or null at a clean end of stream.
  async receive () {
    for (;;) {
      const frame = decodeFrame(this.buf)
      if (frame !== null) {
        this.buf = this.buf.subarray(frame.used)
        return frame.message
      }
      const { value, done } = await withTimeout(this.chunks.next(), 'a frame')
      if (done) {
        if (this.buf.length > 0) throw new Error('the stream ended inside a frame')
        return null
      }
      const chunk = value.subarray()
      const joined = new Uint8Array(this.buf.length + chunk.length)
      joined.set(this.buf, 0)
      joined.set(chunk, this.buf.length)
      this.buf = joined
    }
  }

  async close () {
    await this.stream.close()
  }
}

function withTimeout (promise, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${TIMEOUT_MS} ms`)), TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// -- the peer ---------------------------------------------------------------------------

async function startPeer () {
  const privateKey = await generateKeyPairFromSeed('Ed25519', Buffer.from(options.seed, 'hex'))
  return await createLibp2p({
    privateKey,
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: preSharedKey({ psk: readFileSync(options.swarmKey) })
  })
}

function ownCard (peer) {
  // NodeCard (§8.2): a client-like peer that offers no tools
  return {
    peer_id: peer.peerId.toString(),
    addrs: peer.getMultiaddrs().map(a => a.toString()),
    version: '0.1.0-js',
    tools: [],
    load: { running: 0, capacity: 1 },
    ttl_s: 30
  }
}

async function discoveryExchange (peer, target, nodeId) {
  const stream = await peer.dialProtocol(target, DISCOVERY, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  const frames = new FrameStream(stream)
  await frames.send({ type: 'hello', card: ownCard(peer), peers: [] })
  const reply = await frames.receive()
  await frames.close()
  if (reply?.type !== 'hello') throw new Error(`discovery: expected hello, got ${JSON.stringify(reply)}`)
  if (reply.card.peer_id !== nodeId) throw new Error(`discovery: card of ${reply.card.peer_id}, not of ${nodeId}`)
  return { step: 'discovery', peer_id: reply.card.peer_id, tools: reply.card.tools.map(t => t.name) }
}

// Canonical JSON (RFC 8785) as §9.12 describes it: JSON.stringify of the value with every
// object's members sorted by their names' UTF-16 code units (JavaScript's default sort).
function canonical (value) {
  if (Array.isArray(value)) return value.map(canonical)
  if (value !== null && typeof value === 'object') {
    const out = {}
    for (const key of Object.keys(value).sort()) out[key] = canonical(value[key])
    return out
  }
  return value
}

function jsonSha256 (value) {
  return createHash('sha256').update(JSON.stringify(canonical(value)), 'utf8').digest('hex')
}

// §9.12: rebuild the signed object from our own offer and the outputs we got, and check the
// signature with the public key inside the delegatee's peer id.
async function checkReceipt (offer, result, delegator, delegateeKey, delegateeId) {
  const receipt = result.receipt
  if (receipt.args_sha256 !== jsonSha256(offer.args)) throw new Error('receipt: other arguments')
  if (receipt.outputs_sha256 !== jsonSha256(result.outputs)) throw new Error('receipt: other outputs')
  const signed = JSON.stringify(canonical({
    domain: 'hivemesh/handoff-receipt/1',
    handoff_id: offer.handoff_id,
    epoch: offer.epoch,
    delegator,
    delegatee: delegateeId,
    tool: offer.tool,
    tool_version: receipt.tool_version,
    args_sha256: receipt.args_sha256,
    outputs_sha256: receipt.outputs_sha256
  }))
  const ok = await delegateeKey.verify(new TextEncoder().encode(signed), Buffer.from(receipt.signature, 'base64'))
  if (!ok) throw new Error('receipt: the signature is not the delegatee\'s')
}

async function handoffAdd (peer, target, nodeId) {
  const handoffId = `js-${randomBytes(6).toString('hex')}`
  const stream = await peer.dialProtocol(target, HANDOFF, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  const remote = peer.getConnections().find(c => c.remotePeer.toString() === nodeId)
  const frames = new FrameStream(stream)
  const offer = {
    type: 'offer',
    handoff_id: handoffId,
    workflow_id: 'js-interop',
    step: 'add',
    tool: 'math.add',
    version: null,
    args: { a: 2, b: 40 },
    deadline_ms: 20000,
    hops: 1,
    epoch: 0
  }
  await frames.send(offer)
  const seen = []
  for (;;) {
    const message = await frames.receive()
    if (message === null) throw new Error(`handoff: the stream ended after ${seen.join(', ')}`)
    seen.push(message.type)
    if (message.handoff_id !== undefined && message.handoff_id !== handoffId) {
      throw new Error(`handoff: a message for ${message.handoff_id}`)
    }
    if (message.type === 'accept' || message.type === 'heartbeat') continue
    if (message.type !== 'result') {
      await frames.close()
      throw new Error(`handoff: ${JSON.stringify(message)}`)
    }
    if (message.epoch !== offer.epoch) throw new Error(`handoff: a result for epoch ${message.epoch}`)
    const delegatee = remote.remotePeer
    await checkReceipt(offer, message, peer.peerId.toString(), delegatee.publicKey, delegatee.toString())
    await frames.send({ type: 'ack', handoff_id: handoffId, epoch: offer.epoch })
    await frames.close()
    return { step: 'handoff', messages: seen, outputs: message.outputs, receipt_verified: true }
  }
}

async function controlInfo (peer, target) {
  const stream = await peer.dialProtocol(target, CONTROL, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  const frames = new FrameStream(stream)
  await frames.send({ type: 'info' })
  const reply = await frames.receive()
  await frames.close()
  if (reply?.type !== 'info') throw new Error(`control: ${JSON.stringify(reply)}`)
  return { step: 'control', peer_id: reply.peer_id, tools: reply.tools, version: reply.version }
}

// §10.8: submit a workflow, then watch it: `watching`, events in `seq` order and heartbeats
// until the `workflow_finished` event; a lost stream or `lagged` is watched again from `since`.
async function controlWatch (peer, target) {
  const submitStream = await peer.dialProtocol(target, CONTROL_WATCH, { signal: AbortSignal.timeout(TIMEOUT_MS) })
  const submit = new FrameStream(submitStream)
  await submit.send({ type: 'submit', workflow: options.workflow, workflow_id: options.workflowId })
  const submitted = await submit.receive()
  await submit.close()
  if (submitted?.type !== 'submitted') throw new Error(`submit: ${JSON.stringify(submitted)}`)
  const frames = []
  let since = 0
  for (let attempt = 0; attempt < 5; attempt++) {
    const stream = await peer.dialProtocol(target, CONTROL_WATCH, { signal: AbortSignal.timeout(TIMEOUT_MS) })
    const watch = new FrameStream(stream)
    await watch.send({ type: 'watch', workflow_id: options.workflowId, since })
    for (;;) {
      const frame = await watch.receive()
      if (frame === null) break // ended before workflow_finished: watch again
      frames.push(frame)
      if (frame.type === 'error' && frame.code !== 'lagged') throw new Error(`watch: ${JSON.stringify(frame)}`)
      if (frame.type === 'error') break
      if (frame.type === 'event') {
        since = frame.seq
        if (frame.kind === 'workflow_finished') {
          await watch.close()
          return {
            step: 'watch',
            types: frames.map(f => f.type),
            events: frames.filter(f => f.type === 'event').map(f => ({ seq: f.seq, kind: f.kind, step: f.step, node: f.node })),
            status: frame.status
          }
        }
      }
    }
    await watch.close()
  }
  throw new Error(`watch: no workflow_finished after 5 attempts: ${JSON.stringify(frames)}`)
}

async function serveDiscovery (peer) {
  await peer.handle(DISCOVERY, async (stream, connection) => {
    const frames = new FrameStream(stream)
    try {
      const hello = await frames.receive()
      if (hello?.type !== 'hello') throw new Error(`expected hello, got ${JSON.stringify(hello)}`)
      if (hello.card.peer_id !== connection.remotePeer.toString()) {
        await frames.send({ type: 'error', code: 'invalid_card', message: 'a card for another peer' })
      } else {
        await frames.send({ type: 'hello', card: ownCard(peer), peers: [] })
      }
      await frames.close()
      report({ event: 'hello_from', peer_id: hello.card.peer_id, tools: hello.card.tools.map(t => t.name) })
    } catch (err) {
      report({ event: 'serve_error', error: String(err?.message ?? err) })
      stream.abort(err)
    }
  })
}

async function main () {
  const peer = await startPeer()
  report({ event: 'started', peer_id: peer.peerId.toString(), addrs: peer.getMultiaddrs().map(a => a.toString()) })
  let ok = false
  try {
    if (options.mode === 'listen') {
      await serveDiscovery(peer)
      report({ event: 'listening' })
      process.stdin.resume()
      await new Promise(resolve => process.stdin.on('end', resolve).on('close', resolve))
      ok = true
    } else {
      const target = multiaddr(options.node)
      const nodeId = target.getComponents().find(c => c.name === 'p2p')?.value
      if (options.mode === 'dial') {
        report(await discoveryExchange(peer, target, nodeId))
        report(await handoffAdd(peer, target, nodeId))
        report(await controlInfo(peer, target))
        ok = true
      } else if (options.mode === 'watch') {
        report(await controlWatch(peer, target))
        ok = true
      } else if (options.mode === 'refused') {
        try {
          await discoveryExchange(peer, target, nodeId)
          report({ event: 'connected', error: null })
        } catch (err) {
          report({ event: 'refused', error: String(err?.message ?? err) })
          ok = peer.getConnections().length === 0
        }
      } else {
        throw new Error(`unknown mode ${options.mode}`)
      }
    }
  } catch (err) {
    report({ event: 'failed', error: String(err?.stack ?? err) })
  } finally {
    await peer.stop()
  }
  process.exit(ok ? 0 : 1)
}

await main()
