/*
 * "SMS Gateway for Android" (capcom6/android-sms-gateway), Local Server mode, played by a
 * Netty 4.1 HTTP/1.1 server: the phone's server is Ktor 2.2.4 on Netty, so websmsd's own
 * HTTP client (websmsd.http.oneshot) meets Netty's HTTP codec here, not a Python fake.
 *
 * What it emulates is the project notes' ../shared/android-gateways.md, "SMS Gateway for Android (local
 * server)" (the app's v1.68.0 source), and mirrors tests/phonepeers.py's FakeSMSGate.
 * It shares no code with websmsd.  Plain Java 17, one file, no build tool:
 *
 *   javac -cp NETTY_JARS -d OUT SmsGatePeer.java
 *   java -cp OUT:NETTY_JARS SmsGatePeer --user sms --password-b64 BASE64 [--log FILE]
 *        [--device-id ID] [--tz-minutes 420] [--version 1.68.0]
 *
 * NETTY_JARS (Debian's libnetty-java, /usr/share/java): netty-common, netty-buffer,
 * netty-transport, netty-codec, netty-codec-http; and jctools-core (libjctools-java, a
 * dependency of libnetty-java), which Debian's netty-common refers to unshaded on some
 * paths.
 *
 * It listens on 127.0.0.1, an ephemeral port; the port is stdout's first line.  It runs
 * until stdin closes (or it is killed).  The password comes as base64 of its UTF-8 bytes:
 * the JVM decodes argv by the locale, which may be ASCII.
 *
 * The phone's own routes (Basic auth on all but GET /health):
 *   GET /health, GET /, POST /message and /messages, GET /message/{id} and
 *   /messages/{id}, GET /inbox (answered chunked, as a streamed body).
 * The test's control routes (no auth, not logged):
 *   POST /_test/receive {"sender", "text", "createdAt": ms, "id"?, "type"?, "simNumber"?,
 *                        "recipient"?}    the phone receives an SMS (inbox)
 *   POST /_test/state   {"id", "state", "error"?}   a message moves (Sent, Delivered...)
 *   POST /_test/health  {"status": "pass" | "warn" | "fail"}
 *   GET  /_test/messages                 what was posted to the phone
 * With --log FILE, each request to the phone's routes is one JSON line there (written
 * before the answer leaves): connection id, method, uri, headers, body, and the answer's
 * status and framing; each closed connection adds a line with its count.  The headers are
 * HttpServerCodec's view of the request, taken before HttpObjectAggregator adds a
 * Content-Length of its own; Netty's decoder itself re-sets a received Content-Length
 * under its lower-case name, last.
 */

import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFuture;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.EventLoopGroup;
import io.netty.channel.SimpleChannelInboundHandler;
import io.netty.channel.nio.NioEventLoopGroup;
import io.netty.channel.socket.SocketChannel;
import io.netty.channel.socket.nio.NioServerSocketChannel;
import io.netty.handler.codec.http.DefaultFullHttpResponse;
import io.netty.handler.codec.http.DefaultHttpContent;
import io.netty.handler.codec.http.DefaultHttpResponse;
import io.netty.handler.codec.http.FullHttpRequest;
import io.netty.handler.codec.http.FullHttpResponse;
import io.netty.handler.codec.http.HttpHeaderNames;
import io.netty.handler.codec.http.HttpHeaderValues;
import io.netty.handler.codec.http.HttpMethod;
import io.netty.handler.codec.http.HttpObjectAggregator;
import io.netty.handler.codec.http.HttpRequest;
import io.netty.handler.codec.http.HttpResponse;
import io.netty.handler.codec.http.HttpResponseStatus;
import io.netty.handler.codec.http.HttpServerCodec;
import io.netty.handler.codec.http.HttpUtil;
import io.netty.handler.codec.http.HttpVersion;
import io.netty.handler.codec.http.LastHttpContent;
import io.netty.handler.codec.http.QueryStringDecoder;
import io.netty.util.AttributeKey;

import java.io.ByteArrayOutputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class SmsGatePeer {

    // ------------------------------------------------------------------------------------
    // Settings and the phone's state
    // ------------------------------------------------------------------------------------

    static String user = "sms";
    static String password = "";
    static String deviceId = "dev0ZqQ7";
    static String version = "1.68.0";
    static ZoneOffset zone = ZoneOffset.ofTotalSeconds(7 * 3600);
    static OutputStream log;

    static final Object LOCK = new Object();
    static final Map<String, Msg> MESSAGES = new LinkedHashMap<>();
    static final List<Row> ROWS = new ArrayList<>();
    static String healthStatus = "pass";

    static final String JSON_TYPE = HttpHeaderValues.APPLICATION_JSON + "; " + HttpHeaderValues.CHARSET + "=UTF-8";
    static final String REALM = "Basic realm=\"Access to SMS Gateway\", charset=\"UTF-8\"";
    static final AttributeKey<Integer> SERVED = AttributeKey.valueOf("served");
    static final AttributeKey<List<Object>> RECEIVED = AttributeKey.valueOf("received");

    /** A message posted to the phone (the app's messages table, with its recipients). */
    static final class Msg {
        String id;
        List<String> numbers = new ArrayList<>();
        String text;
        String state = "Pending";
        Map<String, String> errors = new LinkedHashMap<>();
        Map<String, Long> states = new LinkedHashMap<>();
        Long sim;
        boolean withDeliveryReport = true;
        boolean skipValidation;
        String rawBody;
    }

    /** One row of the app's incoming_messages table. */
    static final class Row {
        String id, sender, text, type, recipient;
        long createdMs;
        Long sim;
    }

    // ------------------------------------------------------------------------------------
    // Main
    // ------------------------------------------------------------------------------------

    public static void main(String[] args) throws Exception {
        String logPath = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            String v = args[i + 1];
            switch (args[i]) {
                case "--user": user = v; break;
                case "--password-b64":
                    password = new String(Base64.getDecoder().decode(v), StandardCharsets.UTF_8);
                    break;
                case "--log": logPath = v; break;
                case "--device-id": deviceId = v; break;
                case "--version": version = v; break;
                case "--tz-minutes": zone = ZoneOffset.ofTotalSeconds(Integer.parseInt(v) * 60); break;
                default: throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        if (logPath != null) {
            log = new FileOutputStream(logPath, true);
        }
        EventLoopGroup boss = new NioEventLoopGroup(1);
        EventLoopGroup workers = new NioEventLoopGroup(2);
        try {
            ServerBootstrap b = new ServerBootstrap()
                .group(boss, workers)
                .channel(NioServerSocketChannel.class)
                .childHandler(new ChannelInitializer<SocketChannel>() {
                    @Override
                    protected void initChannel(SocketChannel ch) {
                        ch.pipeline()
                            .addLast("codec", new HttpServerCodec())
                            .addLast("received", new ReceivedHeaders())
                            .addLast("aggregator", new HttpObjectAggregator(1 << 20))
                            .addLast("phone", new PhoneHandler());
                    }
                });
            Channel server = b.bind("127.0.0.1", 0).sync().channel();
            System.out.println(((InetSocketAddress) server.localAddress()).getPort());
            System.out.flush();
            // Until stdin closes: the test's end (or its death) ends the peer.
            byte[] sink = new byte[256];
            while (System.in.read(sink) >= 0) {
                // discard
            }
            server.close().sync();
        } finally {
            boss.shutdownGracefully(0, 1, java.util.concurrent.TimeUnit.SECONDS);
            workers.shutdownGracefully(0, 1, java.util.concurrent.TimeUnit.SECONDS);
        }
        System.exit(0);
    }

    // ------------------------------------------------------------------------------------
    // HTTP
    // ------------------------------------------------------------------------------------

    /** An answer before it is written: status, headers, body, and whether it is streamed. */
    static final class Answer {
        final int status;
        final Map<String, String> headers = new LinkedHashMap<>();
        final byte[] body;
        boolean chunked;

        Answer(int status, byte[] body) {
            this.status = status;
            this.body = body;
        }

        static Answer json(int status, Object value) {
            Answer a = new Answer(status, Json.encode(value).getBytes(StandardCharsets.UTF_8));
            a.headers.put("Content-Type", JSON_TYPE);
            return a;
        }

        static Answer empty(int status) {
            return new Answer(status, new byte[0]);
        }
    }

    /** Keeps the request's headers as the codec decoded them, before HttpObjectAggregator
     *  adds its Content-Length to a request that had none. */
    static final class ReceivedHeaders extends ChannelInboundHandlerAdapter {
        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) throws Exception {
            if (msg instanceof HttpRequest) {
                List<Object> headers = new ArrayList<>();
                for (Map.Entry<String, String> h : ((HttpRequest) msg).headers()) {
                    headers.add(List.of(h.getKey(), h.getValue()));
                }
                ctx.channel().attr(RECEIVED).set(headers);
            }
            super.channelRead(ctx, msg);
        }
    }

    static final class PhoneHandler extends SimpleChannelInboundHandler<FullHttpRequest> {

        @Override
        protected void channelRead0(ChannelHandlerContext ctx, FullHttpRequest req) {
            Channel ch = ctx.channel();
            Integer served = ch.attr(SERVED).get();
            ch.attr(SERVED).set(served == null ? 1 : served + 1);
            boolean keepAlive = HttpUtil.isKeepAlive(req);
            Answer answer;
            if (!req.decoderResult().isSuccess()) {
                answer = Answer.empty(400);
                keepAlive = false;
            } else {
                byte[] body = new byte[req.content().readableBytes()];
                req.content().getBytes(req.content().readerIndex(), body);
                String uri = req.uri();
                try {
                    answer = uri.startsWith("/_test/") ? control(req.method(), uri, body)
                                                       : route(req, body);
                } catch (RuntimeException e) {
                    e.printStackTrace();
                    answer = Answer.json(500, map("message", String.valueOf(e)));
                }
                if (!uri.startsWith("/_test/")) {
                    record(ch, req, body, answer, keepAlive);
                }
            }
            respond(ctx, answer, keepAlive);
        }

        @Override
        public void channelInactive(ChannelHandlerContext ctx) throws Exception {
            Integer served = ctx.channel().attr(SERVED).get();
            if (served != null) {
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("event", "closed");
                line.put("conn", ctx.channel().id().asShortText());
                line.put("requests", served);
                writeLog(line);
            }
            super.channelInactive(ctx);
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            System.err.println("peer: " + cause);
            ctx.close();
        }
    }

    /** Writes the answer as Ktor on Netty does: Netty's own keep-alive rule decides the
     *  Connection header, and the connection is closed once the answer has left when the
     *  request asked for that (Connection: close, or HTTP/1.0 without keep-alive). */
    static void respond(ChannelHandlerContext ctx, Answer a, boolean keepAlive) {
        HttpResponseStatus status = HttpResponseStatus.valueOf(a.status);
        ChannelFuture last;
        if (a.chunked) {
            HttpResponse head = new DefaultHttpResponse(HttpVersion.HTTP_1_1, status);
            a.headers.forEach((k, v) -> head.headers().set(k, v));
            HttpUtil.setTransferEncodingChunked(head, true);
            HttpUtil.setKeepAlive(head, keepAlive);
            ctx.write(head);
            // The body in several chunks, each flushed: a body written as it is made.
            int step = Math.max(1, (a.body.length + 2) / 3);
            for (int off = 0; off < a.body.length; off += step) {
                int n = Math.min(step, a.body.length - off);
                ctx.writeAndFlush(new DefaultHttpContent(Unpooled.wrappedBuffer(a.body, off, n)));
            }
            last = ctx.writeAndFlush(LastHttpContent.EMPTY_LAST_CONTENT);
        } else {
            ByteBuf content = Unpooled.wrappedBuffer(a.body);
            FullHttpResponse full = new DefaultFullHttpResponse(HttpVersion.HTTP_1_1, status, content);
            a.headers.forEach((k, v) -> full.headers().set(k, v));
            HttpUtil.setContentLength(full, a.body.length);
            HttpUtil.setKeepAlive(full, keepAlive);
            last = ctx.writeAndFlush(full);
        }
        if (!keepAlive) {
            last.addListener(ChannelFutureListener.CLOSE);
        }
    }

    static void record(Channel ch, FullHttpRequest req, byte[] body, Answer a, boolean keepAlive) {
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("conn", ch.id().asShortText());
        line.put("request", ch.attr(SERVED).get());
        line.put("method", req.method().name());
        line.put("uri", req.uri());
        line.put("version", req.protocolVersion().text());
        line.put("headers", ch.attr(RECEIVED).get());
        line.put("body", new String(body, StandardCharsets.UTF_8));
        line.put("keepAlive", keepAlive);
        line.put("status", a.status);
        line.put("chunked", a.chunked);
        writeLog(line);
    }

    static void writeLog(Map<String, Object> line) {
        if (log == null) {
            return;
        }
        byte[] bytes = (Json.encode(line) + "\n").getBytes(StandardCharsets.UTF_8);
        synchronized (LOCK) {
            try {
                log.write(bytes);
                log.flush();
            } catch (IOException e) {
                System.err.println("peer: cannot log: " + e);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // The phone's routes
    // ------------------------------------------------------------------------------------

    static Answer route(FullHttpRequest req, byte[] body) {
        QueryStringDecoder q = new QueryStringDecoder(req.uri());  // `+` is a space, as in Ktor
        String path = q.rawPath();
        HttpMethod method = req.method();
        if (path.equals("/health") && method.equals(HttpMethod.GET)) {
            return health();
        }
        if (!authorised(req.headers().get(HttpHeaderNames.AUTHORIZATION))) {
            // Ktor's UnauthorizedResponse: no body at all.
            Answer a = Answer.empty(401);
            a.headers.put("WWW-Authenticate", REALM);
            return a;
        }
        if (path.equals("/") && method.equals(HttpMethod.GET)) {
            return Answer.json(200, map("status", "ok", "model", "Pixel 4"));
        }
        if ((path.equals("/message") || path.equals("/messages")) && method.equals(HttpMethod.POST)) {
            return postMessage(body, q.parameters());
        }
        for (String prefix : new String[] {"/message/", "/messages/"}) {
            if (path.startsWith(prefix) && method.equals(HttpMethod.GET)) {
                String id = decodePath(path.substring(prefix.length()));
                synchronized (LOCK) {
                    Msg m = MESSAGES.get(id);
                    return m == null ? Answer.empty(404) : Answer.json(200, messageJson(m));
                }
            }
        }
        if (path.equals("/inbox") && method.equals(HttpMethod.GET)) {
            return inbox(q.parameters());
        }
        return Answer.empty(404);
    }

    /** Ktor's basic auth: the scheme, base64, UTF-8, split at the first ':'. */
    static boolean authorised(String header) {
        if (header == null) {
            return false;
        }
        String[] parts = header.trim().split(" ", 2);
        if (parts.length != 2 || !parts[0].equalsIgnoreCase("Basic")) {
            return false;
        }
        String text;
        try {
            text = new String(Base64.getDecoder().decode(parts[1].trim()), StandardCharsets.UTF_8);
        } catch (IllegalArgumentException e) {
            return false;
        }
        int colon = text.indexOf(':');
        if (colon < 0) {
            return false;
        }
        return text.substring(0, colon).equals(user) && text.substring(colon + 1).equals(password);
    }

    static Answer health() {
        boolean failing;
        String status;
        synchronized (LOCK) {
            status = healthStatus;
        }
        failing = status.equals("fail");
        Map<String, Object> checks = new LinkedHashMap<>();
        checks.put("battery:level", map("status", failing ? "fail" : "pass", "observedValue", failing ? 7 : 80,
                                        "observedUnit", "percent", "description", "Battery level in percent"));
        checks.put("connection:status", map("status", "pass", "observedValue", 1, "observedUnit", "boolean",
                                            "description", "Internet connection status"));
        return Answer.json(failing ? 500 : 200,
                           map("status", status, "version", version, "releaseId", 1, "checks", checks));
    }

    static final String NANOID = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    static final SecureRandom RANDOM = new SecureRandom();

    static Answer postMessage(byte[] body, Map<String, List<String>> query) {
        Object parsed;
        try {
            parsed = Json.parse(new String(body, StandardCharsets.UTF_8));
        } catch (RuntimeException e) {
            return Answer.json(400, map("message", "Failed to convert request body"));
        }
        if (!(parsed instanceof Map)) {
            return Answer.json(400, map("message", "Failed to convert request body"));
        }
        Map<?, ?> data = (Map<?, ?>) parsed;
        List<String> kinds = new ArrayList<>();
        for (String k : new String[] {"textMessage", "dataMessage", "message"}) {
            if (data.get(k) != null) {
                kinds.add(k);
            }
        }
        if (kinds.isEmpty()) {
            return Answer.json(400, map("message",
                "Must specify exactly one of: textMessage, dataMessage, or message"));
        }
        if (kinds.size() > 1) {
            return Answer.json(400, map("message", "Cannot specify multiple message types simultaneously"));
        }
        String text;
        if (kinds.get(0).equals("textMessage")) {
            Object tm = data.get("textMessage");
            Object t = tm instanceof Map ? ((Map<?, ?>) tm).get("text") : null;
            text = t instanceof String ? (String) t : "";
        } else {
            Object t = data.get("message");
            text = t == null ? "" : String.valueOf(t);
        }
        if (text.isEmpty()) {
            return Answer.json(400, map("message", "Text message is empty"));
        }
        if (!data.containsKey("phoneNumbers")) {
            // A Kotlin non-null field that Gson left null.
            return Answer.json(500, map("message", "Parameter specified as non-null is null: phoneNumbers"));
        }
        Object numbers = data.get("phoneNumbers");
        if (!(numbers instanceof List) || ((List<?>) numbers).isEmpty()) {
            return Answer.json(400, map("message", "phoneNumbers is empty"));
        }
        Object sim = data.get("simNumber");
        if (sim instanceof Number && ((Number) sim).longValue() < 1) {
            return Answer.json(400, map("message", "simNumber must be >= 1"));
        }
        Object given = data.get("id");
        String id;
        if (given instanceof String && !((String) given).isEmpty()) {
            id = (String) given;
        } else {
            StringBuilder sb = new StringBuilder();
            for (int i = 0; i < 21; i++) {
                sb.append(NANOID.charAt(RANDOM.nextInt(NANOID.length())));
            }
            id = sb.toString();
        }
        List<String> skip = query.get("skipPhoneValidation");
        synchronized (LOCK) {
            if (MESSAGES.containsKey(id)) {
                return Answer.json(409, map("message", "Message with the same ID already exists"));
            }
            Msg m = new Msg();
            m.id = id;
            for (Object n : (List<?>) numbers) {
                m.numbers.add(String.valueOf(n));
            }
            m.text = text;
            m.states.put("Pending", System.currentTimeMillis());
            m.sim = sim instanceof Number ? ((Number) sim).longValue() : null;
            m.withDeliveryReport = !Boolean.FALSE.equals(data.get("withDeliveryReport"));
            m.skipValidation = skip != null && skip.contains("true");
            m.rawBody = new String(body, StandardCharsets.UTF_8);
            MESSAGES.put(id, m);
            Map<String, Object> answer = messageJson(m);
            answer.remove("textMessage");
            return Answer.json(202, answer);
        }
    }

    /** L:domain/messages/Message.kt, nulls left out (Gson without serializeNulls). */
    static Map<String, Object> messageJson(Msg m) {
        List<Object> recipients = new ArrayList<>();
        for (String n : m.numbers) {
            Map<String, Object> r = map("phoneNumber", n, "state", m.state);
            if (m.errors.get(n) != null) {
                r.put("error", m.errors.get(n));
            }
            recipients.add(r);
        }
        Map<String, Object> states = new LinkedHashMap<>();
        m.states.forEach((k, v) -> states.put(k, date(v)));
        return map("id", m.id, "deviceId", deviceId, "state", m.state, "isHashed", false,
                   "isEncrypted", false, "textMessage", map("text", m.text), "recipients", recipients,
                   "states", states);
    }

    static final Pattern KTOR_DATE = Pattern.compile(
        "\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(?:\\.\\d{3})?(?:Z|[+-]\\d{2}:\\d{2})");

    /** helpers/DateTimeParser: yyyy-MM-dd'T'HH:mm:ss[.SSS]XXX, the offset required. */
    static Long parseDate(String text) {
        if (!KTOR_DATE.matcher(text).matches()) {
            return null;
        }
        try {
            return OffsetDateTime.parse(text).toInstant().toEpochMilli();
        } catch (RuntimeException e) {
            return null;
        }
    }

    static final DateTimeFormatter OUT_DATE = DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss.SSSxxx");

    /** Dates in answers: the phone's time zone, with milliseconds. */
    static String date(long ms) {
        return Instant.ofEpochMilli(ms).atOffset(zone).format(OUT_DATE);
    }

    static String first(Map<String, List<String>> q, String name) {
        List<String> v = q.get(name);
        return v == null || v.isEmpty() ? null : v.get(0);
    }

    static Answer inbox(Map<String, List<String>> q) {
        String kind = first(q, "type");
        if (kind != null && kind.isEmpty()) {
            kind = null;
        }
        if (kind != null && !List.of("SMS", "DATA_SMS", "MMS", "MMS_DOWNLOADED").contains(kind)) {
            return Answer.json(400, map("message", "Invalid type"));
        }
        int limit = 50;
        int offset = 0;
        try {
            limit = Integer.parseInt(first(q, "limit") == null ? "50" : first(q, "limit"));
        } catch (NumberFormatException e) {
            limit = 50;  // silently, as the app does
        }
        try {
            offset = Integer.parseInt(first(q, "offset") == null ? "0" : first(q, "offset"));
        } catch (NumberFormatException e) {
            offset = 0;
        }
        if (limit < 1 || limit > 500) {
            return Answer.json(400, map("message", "limit must be between 1 and 500"));
        }
        if (offset < 0) {
            return Answer.json(400, map("message", "offset must be >= 0"));
        }
        long start = 0;
        long end = System.currentTimeMillis();  // `to` defaults to the phone's now
        if (first(q, "from") != null) {
            Long v = parseDate(first(q, "from"));
            if (v == null) {
                return Answer.json(400, map("message", "Invalid from datetime"));
            }
            start = v;
        }
        if (first(q, "to") != null) {
            Long v = parseDate(first(q, "to"));
            if (v == null) {
                return Answer.json(400, map("message", "Invalid to datetime"));
            }
            end = v;
        }
        if (first(q, "deviceId") != null && !first(q, "deviceId").equals(deviceId)) {
            return Answer.json(400, map("message", "Invalid device ID"));
        }
        if (start > end) {
            return Answer.json(400, map("message", "Start date cannot be after end date"));
        }
        List<Row> rows = new ArrayList<>();
        synchronized (LOCK) {
            for (Row r : ROWS) {
                if ((kind == null || r.type.equals(kind)) && start <= r.createdMs && r.createdMs <= end) {
                    rows.add(r);
                }
            }
        }
        // IncomingMessagesDao: createdAt descending, then id descending.
        rows.sort(Comparator.comparingLong((Row r) -> r.createdMs).thenComparing(r -> r.id).reversed());
        List<Object> items = new ArrayList<>();
        for (int i = offset; i < rows.size() && i < (long) offset + limit; i++) {
            Row r = rows.get(i);
            Map<String, Object> item = map("id", r.id, "type", r.type, "sender", r.sender);
            if (r.recipient != null) {
                item.put("recipient", r.recipient);
            }
            item.put("simNumber", r.sim);
            item.put("contentPreview", r.text);
            item.put("createdAt", date(r.createdMs));
            item.put("attachments", new ArrayList<>());
            items.add(item);
        }
        Answer a = Answer.json(200, items);
        a.headers.put("X-Total-Count", String.valueOf(rows.size()));
        a.chunked = true;
        return a;
    }

    // ------------------------------------------------------------------------------------
    // The test's control routes
    // ------------------------------------------------------------------------------------

    static Answer control(HttpMethod method, String uri, byte[] body) {
        String path = new QueryStringDecoder(uri).rawPath();
        Map<?, ?> data = null;
        if (method.equals(HttpMethod.POST)) {
            Object parsed = Json.parse(new String(body, StandardCharsets.UTF_8));
            if (!(parsed instanceof Map)) {
                return Answer.json(400, map("message", "a JSON object, please"));
            }
            data = (Map<?, ?>) parsed;
        }
        synchronized (LOCK) {
            if (path.equals("/_test/receive") && data != null) {
                Row r = new Row();
                r.sender = (String) data.get("sender");
                r.text = (String) data.get("text");
                r.createdMs = ((Number) data.get("createdAt")).longValue();
                r.type = data.get("type") == null ? "SMS" : (String) data.get("type");
                r.sim = data.get("simNumber") == null ? 1L : ((Number) data.get("simNumber")).longValue();
                r.recipient = (String) data.get("recipient");
                // v1.63+ ids: "text:" and the Java hash of sender, time, subscription, text.
                r.id = data.get("id") != null ? (String) data.get("id")
                     : "text:" + (r.sender + r.createdMs + r.sim + r.text).hashCode();
                ROWS.removeIf(old -> old.id.equals(r.id));  // the id is the table's key
                ROWS.add(r);
                return Answer.json(200, map("id", r.id, "createdAt", date(r.createdMs)));
            }
            if (path.equals("/_test/state") && data != null) {
                Msg m = MESSAGES.get((String) data.get("id"));
                if (m == null) {
                    return Answer.empty(404);
                }
                m.state = (String) data.get("state");
                m.states.put(m.state, System.currentTimeMillis());
                for (String n : m.numbers) {
                    m.errors.put(n, (String) data.get("error"));
                }
                return Answer.json(200, messageJson(m));
            }
            if (path.equals("/_test/health") && data != null) {
                healthStatus = (String) data.get("status");
                return Answer.json(200, map("status", healthStatus));
            }
            if (path.equals("/_test/messages") && method.equals(HttpMethod.GET)) {
                List<Object> out = new ArrayList<>();
                for (Msg m : MESSAGES.values()) {
                    Map<String, Object> j = messageJson(m);
                    j.put("simNumber", m.sim);
                    j.put("withDeliveryReport", m.withDeliveryReport);
                    j.put("skipPhoneValidation", m.skipValidation);
                    j.put("rawBody", m.rawBody);
                    out.add(j);
                }
                return Answer.json(200, out);
            }
        }
        return Answer.empty(404);
    }

    // ------------------------------------------------------------------------------------
    // Small helpers: maps, path decoding, JSON
    // ------------------------------------------------------------------------------------

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    /** A path segment's percent-decoding (UTF-8); unlike a query, `+` stays `+`. */
    static String decodePath(String s) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] raw = s.getBytes(StandardCharsets.UTF_8);
        for (int i = 0; i < raw.length; i++) {
            if (raw[i] == '%' && i + 2 < raw.length) {
                out.write(Integer.parseInt(new String(raw, i + 1, 2, StandardCharsets.US_ASCII), 16));
                i += 2;
            } else {
                out.write(raw[i]);
            }
        }
        return new String(out.toByteArray(), StandardCharsets.UTF_8);
    }

    /** Just enough JSON: a parser for request bodies and an encoder shaped like Gson's. */
    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String text) {
            Json p = new Json(text);
            p.ws();
            Object v = p.value();
            p.ws();
            if (p.i != text.length()) {
                throw new IllegalArgumentException("JSON: trailing characters at " + p.i);
            }
            return v;
        }

        private void ws() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) {
                i++;
            }
        }

        private IllegalArgumentException bad(String what) {
            return new IllegalArgumentException("JSON: " + what + " at " + i);
        }

        private void expect(char c) {
            if (i >= s.length() || s.charAt(i) != c) {
                throw bad("expected '" + c + "'");
            }
            i++;
        }

        private Object value() {
            ws();
            if (i >= s.length()) {
                throw bad("unexpected end");
            }
            char c = s.charAt(i);
            switch (c) {
                case '{': return object();
                case '[': return array();
                case '"': return string();
                case 't': literal("true"); return Boolean.TRUE;
                case 'f': literal("false"); return Boolean.FALSE;
                case 'n': literal("null"); return null;
                default: return number();
            }
        }

        private void literal(String word) {
            if (!s.startsWith(word, i)) {
                throw bad("unknown literal");
            }
            i += word.length();
        }

        private Map<String, Object> object() {
            Map<String, Object> m = new LinkedHashMap<>();
            expect('{');
            ws();
            if (i < s.length() && s.charAt(i) == '}') {
                i++;
                return m;
            }
            while (true) {
                ws();
                String key = string();
                ws();
                expect(':');
                m.put(key, value());
                ws();
                if (i < s.length() && s.charAt(i) == ',') {
                    i++;
                    continue;
                }
                expect('}');
                return m;
            }
        }

        private List<Object> array() {
            List<Object> l = new ArrayList<>();
            expect('[');
            ws();
            if (i < s.length() && s.charAt(i) == ']') {
                i++;
                return l;
            }
            while (true) {
                l.add(value());
                ws();
                if (i < s.length() && s.charAt(i) == ',') {
                    i++;
                    continue;
                }
                expect(']');
                return l;
            }
        }

        private String string() {
            expect('"');
            StringBuilder sb = new StringBuilder();
            while (true) {
                if (i >= s.length()) {
                    throw bad("unterminated string");
                }
                char c = s.charAt(i++);
                if (c == '"') {
                    return sb.toString();
                }
                if (c < 0x20) {
                    throw bad("control character in a string");
                }
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                if (i >= s.length()) {
                    throw bad("unterminated escape");
                }
                char e = s.charAt(i++);
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) {
                            throw bad("short \\u escape");
                        }
                        sb.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        i += 4;
                        break;
                    default: throw bad("unknown escape");
                }
            }
        }

        private static final Pattern NUMBER = Pattern.compile("-?(?:0|[1-9]\\d*)(\\.\\d+)?([eE][+-]?\\d+)?");

        private Object number() {
            Matcher m = NUMBER.matcher(s);
            m.region(i, s.length());
            if (!m.lookingAt()) {
                throw bad("not a value");
            }
            String text = m.group();
            i = m.end();
            if (m.group(1) == null && m.group(2) == null) {
                try {
                    return Long.parseLong(text);
                } catch (NumberFormatException e) {
                    return Double.parseDouble(text);
                }
            }
            return Double.parseDouble(text);
        }

        static String encode(Object v) {
            StringBuilder sb = new StringBuilder();
            write(sb, v);
            return sb.toString();
        }

        private static void write(StringBuilder sb, Object v) {
            if (v == null) {
                sb.append("null");
            } else if (v instanceof String) {
                quote(sb, (String) v);
            } else if (v instanceof Boolean || v instanceof Number) {
                sb.append(v);
            } else if (v instanceof Map) {
                sb.append('{');
                boolean firstItem = true;
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    if (e.getValue() == null) {
                        continue;  // Gson without serializeNulls
                    }
                    if (!firstItem) {
                        sb.append(',');
                    }
                    firstItem = false;
                    quote(sb, String.valueOf(e.getKey()));
                    sb.append(':');
                    write(sb, e.getValue());
                }
                sb.append('}');
            } else if (v instanceof List) {
                sb.append('[');
                boolean firstItem = true;
                for (Object o : (List<?>) v) {
                    if (!firstItem) {
                        sb.append(',');
                    }
                    firstItem = false;
                    write(sb, o);
                }
                sb.append(']');
            } else {
                quote(sb, String.valueOf(v));
            }
        }

        /** Gson's default (HTML-safe) escaping: control characters, quotes, backslash,
         *  and < > & = ' as \\u escapes; other characters as they are, UTF-8 on the wire. */
        private static void quote(StringBuilder sb, String text) {
            sb.append('"');
            for (int k = 0; k < text.length(); k++) {
                char c = text.charAt(k);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    case '\b': sb.append("\\b"); break;
                    case '\f': sb.append("\\f"); break;
                    default:
                        if (c < 0x20 || c == '<' || c == '>' || c == '&' || c == '=' || c == '\''
                                || c == '\u2028' || c == '\u2029') {
                            sb.append(String.format("\\u%04x", (int) c));
                        } else {
                            sb.append(c);
                        }
                }
            }
            sb.append('"');
        }
    }
}
