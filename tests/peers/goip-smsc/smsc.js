#!/usr/bin/env node
// A GoIP-like SMPP SMSC for websmsd's black-box tests, built on the npm package `smpp`
// (an implementation independent of websmsd's codec).
//
//   node smsc.js [--port 0] [--password secret] [--sims goip01,goip02,...] [--quiet]
//
// --quiet: no event per submit_sm (for benchmarks); {"cmd":"stats"} tells the counts.
// Listens on 127.0.0.1 only. Prints one JSON object per line on stdout (the first is
// {"event":"listening","port":N}); reads one JSON command per line on stdin.
//
// Like a GoIP: one system_id per SIM (goip01, goip02...), bind_transceiver_resp written
// WITHOUT the NUL after system_id (as a GoIP-4 capture shows), submit_sm answered with a
// hex message id, receipts written with decimal ids and "Text:".
//
// Commands ({"cmd": ...}):
//   deliver  {sim, from, text, coding: "ucs2"|"gsm", mode: "short"|"udh"|"payload",
//             ref, order: [2, 1]}       send an SMS (two UDH parts for mode "udh")
//   receipt  {sim, id, stat, err, tlv: bool}   send a delivery receipt
//   drop     {sim}                     close that SIM's connection abruptly
//   mute     {on: bool}                stop / resume answering enquire_link
//   throttle {n}                       answer the next n submit_sm with ESME_RTHROTTLED
//   unbind   {sim}                     send unbind to the client
//   stats                              {"event":"stats","submits":N,"throttled":N}
//   quit
// Events: listening, bind, submit_sm, deliver_sm_resp, enquire_link, unbind, close,
// sent, error.

'use strict';

const smpp = require('smpp');
const readline = require('readline');

const args = process.argv.slice(2);
function arg(name, fallback) {
  const i = args.indexOf('--' + name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
}

const PASSWORD = arg('password', 'secret');
const SIMS = arg('sims', 'goip01,goip02,goip03,goip04,goip05,goip06,goip07,goip08').split(',');
const QUIET = args.includes('--quiet');
const ESME_RTHROTTLED = 0x58;

const sessions = {};   // system_id -> the session bound last as that SIM
let muted = false;
let throttle = 0;
let nextMessageId = 0x0e7c;
const counts = { submits: 0, throttled: 0 };

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function hex(buf) {
  return Buffer.isBuffer(buf) ? buf.toString('hex') : null;
}

function messageOf(value) {
  // the library decodes short_message / message_payload into {udh: [...], message}
  if (value === undefined || value === null) return { text: null, udh: null };
  if (Buffer.isBuffer(value)) return { text: null, udh: null, raw: hex(value) };
  return {
    text: typeof value.message === 'string' ? value.message : null,
    udh: value.udh ? value.udh.map(hex) : null,
  };
}

function rawBindResp(session, pdu, systemId) {
  // Written by hand: the library would add the NUL a GoIP leaves out.
  const body = Buffer.from(systemId, 'ascii');
  const head = Buffer.alloc(16);
  head.writeUInt32BE(16 + body.length, 0);
  head.writeUInt32BE((0x80000000 | pdu.command_id) >>> 0, 4);
  head.writeUInt32BE(0, 8);
  head.writeUInt32BE(pdu.sequence_number, 12);
  const raw = Buffer.concat([head, body]);
  session.socket.write(raw);
  return raw;
}

function onBind(session, pdu) {
  const systemId = pdu.system_id;
  let status = 0;
  if (!SIMS.includes(systemId)) status = smpp.ESME_RINVSYSID;
  else if (pdu.password !== PASSWORD) status = smpp.ESME_RINVPASWD;
  if (status) {
    session.send(pdu.response({ command_status: status }));
    emit({ event: 'bind', command: pdu.command, system_id: systemId, status });
    return;
  }
  session.systemId = systemId;
  sessions[systemId] = session;
  const raw = rawBindResp(session, pdu, systemId);
  emit({ event: 'bind', command: pdu.command, system_id: systemId, status: 0,
         interface_version: pdu.interface_version, resp: hex(raw) });
}

function onSubmit(session, pdu) {
  counts.submits += 1;
  if (QUIET) {
    const id = (nextMessageId++).toString(16).padStart(8, '0');
    return session.send(pdu.response({ message_id: id }));
  }
  const sm = messageOf(pdu.short_message);
  const payload = messageOf(pdu.message_payload);
  const report = {
    event: 'submit_sm', system_id: session.systemId, seq: pdu.sequence_number,
    source_addr: pdu.source_addr, source_addr_ton: pdu.source_addr_ton,
    source_addr_npi: pdu.source_addr_npi, destination_addr: pdu.destination_addr,
    dest_addr_ton: pdu.dest_addr_ton, dest_addr_npi: pdu.dest_addr_npi,
    esm_class: pdu.esm_class, registered_delivery: pdu.registered_delivery,
    data_coding: pdu.data_coding, text: sm.text, udh: sm.udh,
    payload_text: payload.text,
    sar: pdu.sar_msg_ref_num === undefined ? null :
      [pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum],
  };
  if (throttle > 0) {
    throttle -= 1;
    counts.throttled += 1;
    session.send(pdu.response({ command_status: ESME_RTHROTTLED }));
    report.status = ESME_RTHROTTLED;
  } else {
    const id = (nextMessageId++).toString(16).padStart(8, '0');
    session.send(pdu.response({ message_id: id }));
    report.status = 0;
    report.message_id = id;
  }
  emit(report);
}

function attach(session) {
  session.on('bind_transceiver', (pdu) => onBind(session, pdu));
  session.on('bind_transmitter', (pdu) => onBind(session, pdu));
  session.on('bind_receiver', (pdu) => onBind(session, pdu));
  session.on('submit_sm', (pdu) => onSubmit(session, pdu));
  session.on('enquire_link', (pdu) => {
    emit({ event: 'enquire_link', system_id: session.systemId, answered: !muted });
    if (!muted) session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    emit({ event: 'unbind', system_id: session.systemId });
    session.send(pdu.response());
    session.close();
  });
  session.on('unknown', (pdu) => session.send(pdu.response()));
  session.on('close', () => {
    emit({ event: 'close', system_id: session.systemId || null });
    if (session.systemId && sessions[session.systemId] === session) {
      delete sessions[session.systemId];
    }
  });
  session.on('error', (e) => emit({ event: 'error', system_id: session.systemId || null,
                                     message: String(e && e.message) }));
}

function sendDeliver(session, fields, label) {
  session.deliver_sm(fields, (resp) => {
    emit({ event: 'deliver_sm_resp', system_id: session.systemId, label,
           seq: resp.sequence_number, status: resp.command_status });
  });
}

function deliver(cmd) {
  const session = sessions[cmd.sim];
  if (!session) return emit({ event: 'error', message: 'no session for ' + cmd.sim });
  const coding = cmd.coding === 'gsm' ? 0 : 8;
  const base = {
    source_addr: cmd.from || '+15550001000', source_addr_ton: 1, source_addr_npi: 1,
    destination_addr: cmd.sim, data_coding: coding,
  };
  const mode = cmd.mode || 'short';
  if (mode === 'short') {
    sendDeliver(session, Object.assign({}, base, { short_message: { message: cmd.text } }),
                cmd.label);
  } else if (mode === 'payload') {
    // GoIP: an empty short_message and the whole text in message_payload
    sendDeliver(session, Object.assign({}, base, {
      short_message: Buffer.alloc(0), message_payload: { message: cmd.text } }), cmd.label);
  } else if (mode === 'udh') {
    const chars = Array.from(cmd.text);   // never cut a surrogate pair
    const half = Math.ceil(chars.length / 2);
    const parts = [chars.slice(0, half).join(''), chars.slice(half).join('')];
    const ref = cmd.ref === undefined ? 7 : cmd.ref;
    for (const seq of cmd.order || [1, 2]) {
      sendDeliver(session, Object.assign({}, base, {
        short_message: { udh: Buffer.from([5, 0, 3, ref, 2, seq]), message: parts[seq - 1] },
      }), cmd.label);
    }
  }
  emit({ event: 'sent', cmd: 'deliver', sim: cmd.sim });
}

function receipt(cmd) {
  const session = sessions[cmd.sim];
  if (!session) return emit({ event: 'error', message: 'no session for ' + cmd.sim });
  const stat = cmd.stat || 'DELIVRD';
  const fields = {
    source_addr: cmd.to || '15551234567', source_addr_ton: 1, source_addr_npi: 1,
    destination_addr: cmd.sim, esm_class: 0x04, data_coding: 0,
  };
  if (cmd.tlv) {
    fields.receipted_message_id = cmd.id;
    fields.message_state = stat === 'DELIVRD' ? 2 : 5;
    fields.short_message = Buffer.alloc(0);
  } else {
    // the receipt text GoIP firmware writes: decimal id, "Text:" capitalised
    fields.short_message = {
      message: `id:${cmd.id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} ` +
               `submit date:2501011200 done date:2501011201 stat:${stat} ` +
               `err:${cmd.err || '000'} Text:${cmd.text || 'hello'}`,
    };
  }
  sendDeliver(session, fields, cmd.label || 'receipt');
  emit({ event: 'sent', cmd: 'receipt', sim: cmd.sim });
}

const server = smpp.createServer((session) => attach(session));
server.on('error', (e) => emit({ event: 'error', message: String(e && e.message) }));
server.listen(Number(arg('port', '0')), '127.0.0.1', () => {
  emit({ event: 'listening', port: server.address().port });
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return emit({ event: 'error', message: 'bad command: ' + line });
  }
  switch (cmd.cmd) {
    case 'deliver': return deliver(cmd);
    case 'receipt': return receipt(cmd);
    case 'drop': {
      const s = sessions[cmd.sim];
      if (s) s.destroy();
      return emit({ event: 'sent', cmd: 'drop', sim: cmd.sim, found: !!s });
    }
    case 'mute':
      muted = cmd.on !== false;
      return emit({ event: 'sent', cmd: 'mute', on: muted });
    case 'throttle':
      throttle = cmd.n || 0;
      return emit({ event: 'sent', cmd: 'throttle', n: throttle });
    case 'unbind': {
      const s = sessions[cmd.sim];
      if (s) s.unbind();
      return emit({ event: 'sent', cmd: 'unbind', sim: cmd.sim, found: !!s });
    }
    case 'stats':
      return emit(Object.assign({ event: 'stats' }, counts));
    case 'quit':
      return process.exit(0);
    default:
      return emit({ event: 'error', message: 'unknown command: ' + cmd.cmd });
  }
});
rl.on('close', () => process.exit(0));
