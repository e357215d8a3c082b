# Interop driver: the PacketFlow v1.0 spec's Elixir reactor (packetflow.ex) against a node.
#
#   elixir -pa build interop.exs MODE ws://127.0.0.1:PORT/packetflow/v1
#   (or: elixir -r packetflow.ex interop.exs MODE ENDPOINT)
#
# Modes:
#   client  the spec's examples, submitted by Elixir to the node
#   serve   registers ed:notify_users, df:process_data (the spec's "TypeScript -> Elixir"
#           handler), df:elixir_sum, df:elixir_boom, df:elixir_slow and serves them until
#           stdin closes; prints {"ready": true} once connected and one {"event": ...} line
#           per submit in, result out and handler start
#   usage   the spec's usage example: register df:transform, then submit df:transform to a
#           node that has no df:transform of its own (the node routes it back to us)
#   notify  the spec's "Elixir -> TypeScript" example, the Elixir client's side: submit
#           ed:notify_users, which this reactor does not run, to a node without it while a
#           spec TypeScript reactor that runs it (and never says so) is connected
#   wire    against tests/test_interop_elixir.py's scripted WebSocket server: fragmented
#           messages, pings, large frames, the close handshake
#
# Prints one JSON line per check, {"name", "ok", "detail"}; exits 1 if a check failed, 2 on
# a usage error or when the run overran its deadline.

alias PacketFlow.{JSON, Message, Reactor, Result}

Logger.configure_backend(:console, device: :standard_error)

defmodule Interop do
  @check_timeout_ms 15_000

  def report(name, ok, detail) do
    if ok != true, do: Process.put(:failures, (Process.get(:failures) || 0) + 1)
    IO.puts(encode(%{name: name, ok: ok == true, detail: jsonable(detail)}))
  end

  def emit(map), do: IO.puts(encode(jsonable(map)))

  defp encode(term) do
    JSON.encode!(term)
  catch
    _, _ -> JSON.encode!(%{unencodable: inspect(term)})
  end

  # detail values JSON can hold: structs as objects, anything else as inspect/1
  def jsonable(%_{} = struct), do: struct |> Map.from_struct() |> jsonable()
  def jsonable(map) when is_map(map), do: Map.new(map, fn {k, v} -> {to_string(k), jsonable(v)} end)
  def jsonable(list) when is_list(list), do: Enum.map(list, &jsonable/1)
  def jsonable(v) when is_binary(v) or is_number(v) or is_boolean(v) or is_nil(v), do: v
  def jsonable(v) when is_atom(v), do: Atom.to_string(v)
  def jsonable(v), do: inspect(v)

  @doc "Runs `fun` (returns {ok, detail}) in its own process, within a time limit."
  def check(name, fun, timeout \\ @check_timeout_ms) do
    parent = self()
    ref = make_ref()

    {pid, mref} =
      spawn_monitor(fn ->
        outcome =
          try do
            fun.()
          rescue
            error -> {false, %{thrown: Exception.message(error)}}
          catch
            kind, reason -> {false, %{thrown: "#{kind}: #{inspect(reason)}"}}
          end

        send(parent, {ref, outcome})
      end)

    receive do
      {^ref, {ok, detail}} ->
        Process.demonitor(mref, [:flush])
        report(name, ok, detail)
        ok == true

      {:DOWN, ^mref, :process, _, reason} ->
        report(name, false, %{crashed: inspect(reason)})
        false
    after
      timeout ->
        Process.exit(pid, :kill)
        report(name, false, %{thrown: "#{name}: no answer within #{timeout} ms"})
        false
    end
  end

  def success?(%Result{status: :success, packet_id: id, data: data}, id, data), do: true
  def success?(_, _, _), do: false

  def expect_success(result, id, data) do
    {success?(result, id, data),
     %{expected: %{packet_id: id, status: "success", data: data}, got: result}}
  end

  def expect_error(result, id, code) do
    ok = match?(%Result{status: :error, packet_id: ^id, error: %{code: ^code}}, result)
    {ok, %{expected: %{packet_id: id, status: "error", code: code}, got: result}}
  end

  def uuid, do: PacketFlow.UUID.uuid4()

  # -- the frames the reactor sent and received, from its trace: option

  def start_tracer(on_event \\ fn _ -> :ok end) do
    spawn_link(fn -> tracer_loop([], on_event) end)
  end

  defp tracer_loop(events, on_event) do
    receive do
      {:packetflow, event} ->
        on_event.(event)
        tracer_loop([event | events], on_event)

      {:get, from, ref} ->
        send(from, {ref, Enum.reverse(events)})
        tracer_loop(events, on_event)
    end
  end

  def frames(tracer, direction) do
    ref = make_ref()
    send(tracer, {:get, self(), ref})

    receive do
      {^ref, events} ->
        for {^direction, json} <- events, {:ok, map} = JSON.decode(json), do: {json, map}
    after
      5_000 -> raise "tracer did not answer"
    end
  end

  # a forwarded submit we received for `id`, and the result frame we sent back for it
  def served(tracer, id) do
    inbound =
      Enum.find(frames(tracer, :in), fn {_, m} ->
        m["type"] == "submit" and is_map(m["payload"]) and m["payload"]["id"] == id
      end)

    outbound =
      Enum.find(frames(tracer, :out), fn {_, m} ->
        m["type"] == "result" and is_map(m["payload"]) and m["payload"]["packet_id"] == id
      end)

    {inbound && elem(inbound, 1), outbound && elem(outbound, 1)}
  end

  def connect(endpoint, opts) do
    Process.flag(:trap_exit, true)

    case Reactor.start_link([endpoint: endpoint] ++ opts) do
      {:ok, pid} ->
        # handle_continue(:connect) runs before any call: a reply means the link is up
        try do
          info = Reactor.info()
          report("connect", true, %{endpoint: endpoint, info: info})
          {:ok, pid}
        catch
          :exit, reason ->
            report("connect", false, %{endpoint: endpoint, thrown: inspect(reason)})
            :error
        end

      other ->
        report("connect", false, %{endpoint: endpoint, thrown: inspect(other)})
        :error
    end
  end

  def finish do
    failures = Process.get(:failures) || 0
    IO.puts(:stderr, "interop: #{if failures == 0, do: "all checks passed", else: "#{failures} check(s) failed"}")
    System.halt(if failures == 0, do: 0, else: 1)
  end
end

defmodule Interop.Client do
  import Interop

  def run(endpoint) do
    tracer = start_tracer()

    with {:ok, _pid} <- connect(endpoint, trace: tracer) do
      checks(tracer)
    end
  end

  defp checks(tracer) do
    # The spec's usage example: df:transform "hello world" -> "HELLO WORLD".
    transform_id = uuid()

    check("transform", fn ->
      result = Reactor.submit(%{id: transform_id, group: "df", element: "transform",
                                data: "hello world", priority: 5})
      expect_success(result, transform_id, "HELLO WORLD")
    end)

    # The interop example: df:process_data {items: [1..5]} with priority 7 -> 30.
    check("process_data", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "process_data",
                                data: %{items: [1, 2, 3, 4, 5]}, priority: 7})
      expect_success(result, id, 30)
    end)

    # Quick start: cf:validate, nil data goes out as null.
    check("validate_null", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "cf", element: "validate", data: nil, priority: 5})
      expect_success(result, id, %{"valid" => false})
    end)

    check("validate_value", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "cf", element: "validate", data: "x", priority: 5})
      expect_success(result, id, %{"valid" => true})
    end)

    # The Packet struct's nil fields are on the wire as JSON null, and the node accepts them.
    check("nil_optional_fields", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "transform", data: "nil fields",
                                priority: 5, timeout_ms: nil, dependencies: nil, metadata: nil})
      {json, frame} =
        Enum.find(frames(tracer, :out), fn {_, m} -> m["type"] == "submit" and m["payload"]["id"] == id end)

      payload = frame["payload"]
      nulls = for key <- ~w(timeout_ms dependencies metadata), do: {key, Map.fetch(payload, key)}
      wire_ok = Enum.all?(nulls, fn {_, found} -> found == {:ok, nil} end) and
                  String.contains?(json, ~s("timeout_ms":null)) and
                  String.contains?(json, ~s("dependencies":null)) and
                  String.contains?(json, ~s("metadata":null))

      {wire_ok and success?(result, id, "NIL FIELDS"), %{frame_sent: json, got: result}}
    end)

    # The spec's extended packet: timeout_ms, dependencies (the transform above), metadata.
    check("extended_packet", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "transform", data: "extended",
                                priority: 5, timeout_ms: 30_000, dependencies: [transform_id],
                                metadata: %{custom: "fields"}})
      expect_success(result, id, "EXTENDED")
    end)

    check("unicode", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "transform",
                                data: "héllo wörld ✓ 日本", priority: 5})
      expect_success(result, id, "HÉLLO WÖRLD ✓ 日本")
    end)

    # 300 kB each way: 64-bit frame lengths, a result that arrives in many TCP segments.
    check("large_frame", fn ->
      id = uuid()
      text = String.duplicate("abcdefghij", 30_000)
      result = Reactor.submit(%{id: id, group: "df", element: "transform", data: text, priority: 5})
      {success?(result, id, String.upcase(text)),
       %{sent_bytes: byte_size(text), status: result.status,
         got_bytes: is_binary(result.data) && byte_size(result.data)}}
    end)

    # A handler that raises: a result with status error, PF500.
    check("handler_error", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "boom", data: "elixir", priority: 5})
      expect_error(result, id, "PF500")
    end)

    # No handler on the node: the node asks its connected reactors, this one included (which
    # answers PF001, having no such handler either), then answers PF001: nobody runs it.
    unknown_id = uuid()

    check("unknown_element", fn ->
      result = Reactor.submit(%{id: unknown_id, group: "df", element: "no_such_element",
                                data: 1, priority: 5})
      expect_error(result, unknown_id, "PF001")
    end)

    check("forwarded_to_self", fn ->
      {inbound, outbound} = served(tracer, unknown_id)
      timeout_ms = inbound && inbound["payload"]["timeout_ms"]

      ok =
        inbound != nil and outbound != nil and
          is_integer(timeout_ms) and timeout_ms > 0 and timeout_ms <= 30_000 and
          outbound["seq"] == 0 and outbound["payload"]["status"] == "error" and
          outbound["payload"]["error"]["code"] == "PF001" and
          outbound["payload"]["error"]["message"] == "No handler for df:no_such_element"

      {ok, %{submit_received: inbound, result_sent: outbound}}
    end)

    # A standard element from the Elixir reactor: co:gather runs its steps as packets of the
    # node's own (fan-out, fan-in) and answers every output in step order.
    check("co_gather", fn ->
      id = uuid()
      steps = [%{group: "df", element: "transform", data: "fan"},
               %{group: "df", element: "process_data", data: %{items: [1, 2, 3]}},
               %{group: "cf", element: "validate", data: nil}]
      result = Reactor.submit(%{id: id, group: "co", element: "gather", data: %{steps: steps}, priority: 5})
      expect_success(result, id, ["FAN", 12, %{"valid" => false}])
    end)

    # 50 submits in flight at once: each caller gets its own packet's answer (seq matching).
    check("concurrent_50", fn ->
      sent = for i <- 1..50, do: {uuid(), "packet #{i} #{uuid()}", rem(i, 10) + 1}

      results =
        sent
        |> Enum.map(fn {id, text, priority} ->
          Task.async(fn ->
            Reactor.submit(%{id: id, group: "df", element: "transform", data: text, priority: priority})
          end)
        end)
        |> Task.await_many(12_000)

      wrong =
        for {{id, text, _}, result} <- Enum.zip(sent, results),
            not success?(result, id, String.upcase(text)),
            do: %{packet_id: id, got: result}

      {wrong == [], %{count: length(results), mismatched: length(wrong), first: Enum.take(wrong, 3)}}
    end)

    # Priority out of 1-10: an error frame with the submit's seq, PF002: {:error, payload}.
    check("invalid_priority", fn ->
      id = uuid()
      reply = Reactor.submit(%{id: id, group: "df", element: "transform", data: "x", priority: 11})
      {match?({:error, %{"code" => "PF002"}}, reply), %{expected: "{:error, %{\"code\" => \"PF002\"}}", got: reply}}
    end)

    # One bad message must not cost the link.
    check("open_after_error", fn ->
      id = uuid()
      result = Reactor.submit(%{id: id, group: "df", element: "transform", data: "still here", priority: 5})
      expect_success(result, id, "STILL HERE")
    end)

    # A heartbeat is echoed with its seq.
    check("heartbeat", fn ->
      reply = Reactor.heartbeat()

      sent =
        frames(tracer, :out)
        |> Enum.filter(fn {_, m} -> m["type"] == "heartbeat" end)
        |> List.last()

      sent_seq = sent && elem(sent, 1)["seq"]

      ok =
        match?(%Message{type: :heartbeat, payload: %{"timestamp" => ts}} when is_integer(ts), reply) and
          reply.seq == sent_seq

      {ok, %{sent_seq: sent_seq, answer: reply}}
    end)

    check("close", fn ->
      ref = Process.monitor(Reactor)
      :ok = Reactor.stop()
      down = receive do
        {:DOWN, ^ref, :process, _, reason} -> reason
      after
        3_000 -> :still_running
      end

      {down == :normal, %{down: down}}
    end)
  end
end

defmodule Interop.Serve do
  import Interop

  def run(endpoint) do
    tracer = start_tracer(&trace_event/1)

    with {:ok, pid} <- connect(endpoint, trace: tracer) do
      # The Elixir -> TypeScript example's handler, served by Elixir this time.
      Reactor.register("ed", "notify_users", fn data ->
        %{sent: true, message: data["message"]}
      end)

      # The spec's "TypeScript -> Elixir" example's handler, as written.
      PacketFlow.Reactor.register("df", "process_data", fn data ->
        data["items"]
        |> Enum.map(&(&1 * 2))
        |> Enum.sum()
      end)

      Reactor.register("df", "elixir_sum", fn data -> Enum.sum(data["items"]) end)
      Reactor.register("df", "elixir_boom", fn data -> raise "elixir boom: #{inspect(data)}" end)

      Reactor.register("df", "elixir_slow", fn ms ->
        emit(%{event: "started", key: "df:elixir_slow", data: ms})
        Process.sleep(ms)
        "slept"
      end)

      # a heartbeat's round trip: the link carries frames both ways
      %Message{type: :heartbeat} = Reactor.heartbeat()
      emit(%{ready: true, endpoint: endpoint})

      main = self()
      spawn_link(fn ->
        IO.read(:stdio, :eof)
        send(main, :stdin_closed)
      end)

      receive do
        :stdin_closed ->
          Reactor.stop()
          emit(%{event: "stopped"})
          System.halt(0)

        {:EXIT, ^pid, reason} ->
          emit(%{event: "link_down", reason: inspect(reason)})
          System.halt(1)
      end
    end
  end

  defp trace_event({:in, json}) do
    case JSON.decode(json) do
      {:ok, %{"type" => "submit", "seq" => seq, "payload" => p}} ->
        emit(%{event: "submit_in", seq: seq, packet_id: p["id"], key: "#{p["group"]}:#{p["element"]}",
               timeout_ms: p["timeout_ms"], data: p["data"]})

      _ ->
        :ok
    end
  end

  defp trace_event({:out, json}) do
    case JSON.decode(json) do
      {:ok, %{"type" => "result", "seq" => seq, "payload" => p}} ->
        emit(%{event: "result_out", seq: seq, packet_id: p["packet_id"], status: p["status"],
               data: p["data"], error: p["error"]})

      _ ->
        :ok
    end
  end

  defp trace_event(_), do: :ok
end

defmodule Interop.Usage do
  import Interop

  def run(endpoint) do
    tracer = start_tracer()

    # The spec's usage example, word for word but for the endpoint and the trace (and a
    # short heartbeat interval, for the liveness check below).
    with {:ok, _pid} <- connect(endpoint, trace: tracer, heartbeat_ms: 100) do
      # Register a data transformer
      PacketFlow.Reactor.register("df", "transform", fn data ->
        String.upcase(data)
      end)

      # Submit work: the node has no df:transform; it routes the packet to us.
      check("usage_transform", fn ->
        result = PacketFlow.Reactor.submit(%{
          group: "df",
          element: "transform",
          data: "hello world",
          priority: 5
        })

        IO.inspect(:standard_error, result, label: "usage result")
        ok = match?(%Result{status: :success, data: "HELLO WORLD", packet_id: id} when is_binary(id), result)
        {ok, %{got: result}}
      end)

      check("usage_served_here", fn ->
        submitted =
          frames(tracer, :out)
          |> Enum.find(fn {_, m} -> m["type"] == "submit" and m["payload"]["element"] == "transform" end)

        id = submitted && elem(submitted, 1)["payload"]["id"]
        {inbound, outbound} = served(tracer, id)

        ok =
          id != nil and inbound != nil and outbound != nil and outbound["seq"] == 0 and
            outbound["payload"]["status"] == "success" and outbound["payload"]["data"] == "HELLO WORLD" and
            outbound["payload"]["error"] == nil and Map.has_key?(outbound["payload"], "error")

        {ok, %{packet_id: id, submit_received: inbound, result_sent: outbound}}
      end)

      # Heartbeats both ways and WebSocket ping -> pong with a real node (the test runs it
      # with --heartbeat-interval-ms 300; we send ours every 100 ms): after 1.5 s the link
      # is still up and carries a packet.
      check("heartbeat_liveness", fn ->
        Process.sleep(1_500)
        info = Reactor.info()
        result = Reactor.submit(%{group: "df", element: "transform", data: "still alive", priority: 5})
        ok = info.node_heartbeats >= 2 and info.heartbeat_echoes >= 5 and info.pings >= 1 and
               match?(%Result{status: :success, data: "STILL ALIVE"}, result)
        {ok, %{info: info, got: result}}
      end)

      try do
        Reactor.stop()
      catch
        :exit, _ -> :ok  # the link went down already (a failed check says why)
      end
    end
  end
end

defmodule Interop.Notify do
  import Interop

  @message "System maintenance in 10 minutes"

  def run(endpoint) do
    tracer = start_tracer()

    with {:ok, _pid} <- connect(endpoint, trace: tracer) do
      # The spec's "Elixir -> TypeScript" example, the Elixir client as written (with a known
      # id): the node has no ed:notify_users; the TypeScript reactor connected to it does.
      check("elixir_to_ts", fn ->
        id = uuid()

        result = PacketFlow.Reactor.submit(%{
          id: id,
          group: "ed",
          element: "notify_users",
          data: %{message: @message},
          priority: 9
        })

        ok = match?(%Result{status: :success, packet_id: ^id, data: %{"sent" => true, "message" => @message}},
                    result)
        {ok, %{packet_id: id, got: result}}
      end)

      try do
        Reactor.stop()
      catch
        :exit, _ -> :ok
      end
    end
  end
end

defmodule Interop.Wire do
  import Interop

  # Against the test's scripted server (tests/test_interop_elixir.py, ScriptedServer).
  def run(endpoint) do
    tracer = start_tracer()

    with {:ok, pid} <- connect(endpoint, trace: tracer) do
      Reactor.register("df", "wire_echo", fn data -> %{echo: data} end)
      Reactor.register("df", "wire_boom", fn _ -> raise ArgumentError, "wire boom" end)

      check("wire_fragmented_result", fn ->
        id = uuid()
        result = Reactor.submit(%{id: id, group: "df", element: "transform", data: "héllo wörld ✓",
                                  priority: 5})
        expect_success(result, id, "HÉLLO WÖRLD ✓")
      end)

      check("wire_ping_answered", fn ->
        info = Reactor.info()
        # the heartbeat that came in the same TCP write as the 101 response was read too
        {info.pings >= 1 and info.fragments >= 3 and info.node_heartbeats >= 1, %{info: info}}
      end)

      check("wire_large_result", fn ->
        id = uuid()
        result = Reactor.submit(%{id: id, group: "df", element: "large", data: 70_000, priority: 5})
        {success?(result, id, String.duplicate("x", 70_000)),
         %{status: result.status, got_bytes: is_binary(result.data) && byte_size(result.data)}}
      end)

      # the server now sends us submits, then closes the link: the reactor answers the
      # close and stops (the exit signal comes to this process, which started it)
      receive do
        {:EXIT, ^pid, reason} ->
          report("wire_closed_by_server", reason == {:shutdown, :closed}, %{exit: reason})
      after
        10_000 ->
          report("wire_closed_by_server", false, %{exit: "the reactor still runs 10 s after the server's close"})
      end
    end
  end
end

case System.argv() do
  [mode, endpoint] when mode in ~w(client serve usage notify wire) ->
    # serve runs until stdin closes; the others have a deadline
    if mode != "serve" do
      spawn(fn ->
        Process.sleep(50_000)
        IO.puts(:stderr, "interop: run exceeded 50000 ms")
        System.halt(2)
      end)
    end

    case mode do
      "client" -> Interop.Client.run(endpoint)
      "serve" -> Interop.Serve.run(endpoint)
      "usage" -> Interop.Usage.run(endpoint)
      "notify" -> Interop.Notify.run(endpoint)
      "wire" -> Interop.Wire.run(endpoint)
    end

    Interop.finish()

  _ ->
    IO.puts(:stderr, "usage: elixir -pa build interop.exs client|serve|usage|notify|wire ws://HOST:PORT/packetflow/v1")
    System.halt(2)
end
