# The PacketFlow v1.0 spec's Elixir reactor ("Elixir Implementation"), as close to the spec's
# code as OTP allows without hex packages: the spec's structs and `PacketFlow.Reactor`
# GenServer, with `:gen_tcp` + cowlib's `:cow_ws` instead of `:gun` (client WebSocket
# handshake and framing) and `:jiffy` instead of `Jason` (JSON). Debian: elixir,
# erlang-cowlib, erlang-jiffy.
#
# What the spec's code does is kept as it is, on purpose (this is the peer pfnode must
# interoperate with): nil struct fields go on the wire as JSON null; a `submit` frame from
# the endpoint runs the registered handler in a spawned process, answered by a `result`
# frame with seq 0 (PF001 "No handler for g:e" when none is registered, PF500 with
# Exception.message when the handler raises); a submit waits on its seq.
#
# Additions the spec leaves out: `heartbeat/1` (send one, wait for its echo), `info/0`,
# results matched by packet id when they come back with seq 0, pending callers answered
# {:error, ...} when the link closes, the WebSocket close handshake, and the `trace:` and
# `heartbeat_ms:` options of `start_link/1`.

defmodule PacketFlow.Packet do
  @enforce_keys [:version, :id, :group, :element, :data, :priority]
  defstruct [
    :version,
    :id,
    :group,
    :element,
    :data,
    :priority,
    :timeout_ms,
    :dependencies,
    :metadata
  ]

  @type t :: %__MODULE__{
          version: String.t(),
          id: String.t(),
          group: String.t(),
          element: String.t(),
          data: term(),
          priority: integer(),
          timeout_ms: integer() | nil,
          dependencies: [String.t()] | nil,
          metadata: map() | nil
        }
end

defmodule PacketFlow.Message do
  @enforce_keys [:type, :seq, :payload]
  defstruct [:type, :seq, :payload]

  @type t :: %__MODULE__{
          type: :submit | :result | :error | :heartbeat,
          seq: integer(),
          payload: term()
        }
end

defmodule PacketFlow.Result do
  @enforce_keys [:packet_id, :status, :duration_ms]
  defstruct [:packet_id, :status, :data, :error, :duration_ms]

  @type t :: %__MODULE__{
          packet_id: String.t(),
          status: :success | :error,
          data: term() | nil,
          error: %{code: String.t(), message: String.t()} | nil,
          duration_ms: integer()
        }
end

defmodule PacketFlow.JSON do
  @moduledoc """
  JSON as the spec's `Jason.encode!/1` writes these structs, with `:jiffy`: a struct is an
  object with every field (nil fields as `null`), atom values and keys are strings.
  Decoding gives maps with string keys and `nil` for `null`.
  """

  def encode!(term) do
    term |> to_json() |> :jiffy.encode([:use_nil]) |> IO.iodata_to_binary()
  end

  def decode(binary) do
    {:ok, :jiffy.decode(binary, [:return_maps, {:null_term, nil}])}
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  defp to_json(%_{} = struct), do: struct |> Map.from_struct() |> to_json()
  defp to_json(map) when is_map(map), do: Map.new(map, fn {k, v} -> {key(k), to_json(v)} end)
  defp to_json(list) when is_list(list), do: Enum.map(list, &to_json/1)
  defp to_json(value) when value in [nil, true, false], do: value
  defp to_json(atom) when is_atom(atom), do: Atom.to_string(atom)
  defp to_json(value), do: value

  defp key(k) when is_binary(k), do: k
  defp key(k) when is_atom(k) or is_integer(k), do: to_string(k)
end

defmodule PacketFlow.UUID do
  @moduledoc "UUID.uuid4() of the spec's `uuid` package, from :crypto."
  def uuid4 do
    <<a::48, _::4, b::12, _::2, c::62>> = :crypto.strong_rand_bytes(16)
    <<u0::32, u1::16, u2::16, u3::16, u4::48>> = <<a::48, 4::4, b::12, 2::2, c::62>>

    [<<u0::32>>, <<u1::16>>, <<u2::16>>, <<u3::16>>, <<u4::48>>]
    |> Enum.map_join("-", &Base.encode16(&1, case: :lower))
  end
end

defmodule PacketFlow.WebSocket do
  @moduledoc """
  A client WebSocket link (RFC 6455) over `:gen_tcp` with cowlib's `:cow_ws`: the HTTP/1.1
  upgrade handshake (Sec-WebSocket-Accept checked), masked client frames, server frames
  parsed from a byte buffer that may hold part of a frame or several frames, fragmented
  messages (continuation frames, control frames between them, UTF-8 checked across
  fragments) reassembled, pings answered with pongs, the close handshake.

  `handle_data/2` turns received bytes into events:
  `{:text, binary} | {:binary, binary} | {:ping, payload} | {:pong, payload} |
  {:close, code | nil, reason}`.
  """

  defstruct socket: nil,
            buffer: <<>>,
            frag_state: :undefined,
            frag_acc: [],
            utf8: 0,
            close_sent: false,
            pings: 0,
            fragments: 0

  @extensions %{}

  def connect(endpoint, timeout \\ 10_000) do
    uri = URI.parse(endpoint)
    host = uri.host || "localhost"
    port = uri.port || 8443
    path = if uri.path in [nil, ""], do: "/packetflow/v1", else: uri.path
    path = if uri.query, do: path <> "?" <> uri.query, else: path
    key = :cow_ws.key()

    request = [
      "GET ", path, " HTTP/1.1\r\n",
      "Host: ", host, ":", Integer.to_string(port), "\r\n",
      "Upgrade: websocket\r\n",
      "Connection: Upgrade\r\n",
      "Sec-WebSocket-Key: ", key, "\r\n",
      "Sec-WebSocket-Version: 13\r\n",
      "\r\n"
    ]

    opts = [:binary, active: false, packet: :raw, nodelay: true]

    with {:ok, socket} <- :gen_tcp.connect(to_charlist(host), port, opts, timeout),
         :ok <- :gen_tcp.send(socket, request),
         {:ok, status, headers, rest} <- read_response(socket, <<>>, deadline(timeout)),
         :ok <- check_upgrade(status, headers, key, socket) do
      {:ok, %__MODULE__{socket: socket, buffer: rest}}
    end
  end

  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  defp read_response(socket, acc, deadline) do
    case :binary.split(acc, "\r\n\r\n") do
      [head, rest] ->
        [status_line | lines] = String.split(head, "\r\n")

        headers =
          for line <- lines, [name, value] <- [String.split(line, ":", parts: 2)] do
            {String.downcase(String.trim(name)), String.trim(value)}
          end

        {:ok, status_line, headers, rest}

      [_] when byte_size(acc) > 65_536 ->
        {:error, :handshake_response_too_large}

      [_] ->
        left = max(deadline - System.monotonic_time(:millisecond), 0)

        case :gen_tcp.recv(socket, 0, left) do
          {:ok, data} -> read_response(socket, acc <> data, deadline)
          {:error, reason} -> {:error, {:handshake, reason, acc}}
        end
    end
  end

  defp check_upgrade(status_line, headers, key, socket) do
    header = fn name -> for {^name, v} <- headers, do: v end
    accept = :cow_ws.encode_key(key)

    cond do
      not String.starts_with?(status_line, "HTTP/1.1 101") ->
        :gen_tcp.close(socket)
        {:error, {:handshake_status, status_line}}

      Enum.map(header.("upgrade"), &String.downcase/1) != ["websocket"] ->
        :gen_tcp.close(socket)
        {:error, {:handshake_upgrade, header.("upgrade")}}

      header.("sec-websocket-accept") != [accept] ->
        :gen_tcp.close(socket)
        {:error, {:handshake_accept, header.("sec-websocket-accept"), accept}}

      true ->
        :ok
    end
  end

  def send_text(%__MODULE__{socket: socket}, text) when is_binary(text) do
    :gen_tcp.send(socket, :cow_ws.masked_frame({:text, text}, @extensions))
  end

  def send_close(%__MODULE__{close_sent: true} = ws, _code, _reason), do: ws

  def send_close(%__MODULE__{socket: socket} = ws, code, reason) do
    # {:close, code, payload}: cowlib 1.3's masked_frame({:close, payload}) is sent unmasked
    _ = :gen_tcp.send(socket, :cow_ws.masked_frame({:close, code, reason}, @extensions))
    %{ws | close_sent: true}
  end

  @doc "Parses `data` (and what was left from before): {:ok, events, ws} | {:error, reason, events, ws}."
  def handle_data(%__MODULE__{} = ws, data) do
    parse(%{ws | buffer: ws.buffer <> data}, [])
  end

  defp parse(ws, events) do
    case :cow_ws.parse_header(ws.buffer, @extensions, ws.frag_state) do
      :more ->
        {:ok, Enum.reverse(events), ws}

      :error ->
        {:error, :badframe, Enum.reverse(events), ws}

      {_type, _frag, _rsv, _len, mask_key, _rest} when mask_key != :undefined ->
        # RFC 6455 5.1: a server must not mask its frames
        {:error, :masked_server_frame, Enum.reverse(events), ws}

      {_type, _frag, _rsv, len, _mask, rest} when byte_size(rest) < len ->
        # wait for the whole frame; the header is parsed again then
        {:ok, Enum.reverse(events), ws}

      {type, frag_state, rsv, len, mask_key, rest} ->
        utf8 = if type == :fragment, do: ws.utf8, else: 0

        case :cow_ws.parse_payload(rest, mask_key, utf8, 0, type, len, frag_state, @extensions, rsv) do
          {:ok, payload, utf8_after, rest_after} ->
            frame = :cow_ws.make_frame(type, payload, :undefined, frag_state)
            frame_done(%{ws | buffer: rest_after}, frame, frag_state, utf8_after, events)

          {:ok, code, payload, _utf8_after, rest_after} ->
            frame = :cow_ws.make_frame(:close, payload, code, frag_state)
            frame_done(%{ws | buffer: rest_after}, frame, frag_state, ws.utf8, events)

          {:error, reason} ->
            {:error, reason, Enum.reverse(events), ws}
        end
    end
  end

  defp frame_done(ws, {:fragment, :nofin, _type, payload}, frag_state, utf8, events) do
    ws = %{ws | frag_state: frag_state, utf8: utf8, frag_acc: [ws.frag_acc, payload],
                fragments: ws.fragments + 1}
    parse(ws, events)
  end

  defp frame_done(ws, {:fragment, :fin, type, payload}, _frag_state, _utf8, events) do
    message = IO.iodata_to_binary([ws.frag_acc, payload])
    ws = %{ws | frag_state: :undefined, utf8: 0, frag_acc: [], fragments: ws.fragments + 1}
    parse(ws, [{type, message} | events])
  end

  defp frame_done(ws, {type, payload}, _frag_state, _utf8, events) when type in [:text, :binary] do
    parse(ws, [{type, payload} | events])
  end

  defp frame_done(ws, :ping, frag_state, utf8, events),
    do: frame_done(ws, {:ping, <<>>}, frag_state, utf8, events)

  defp frame_done(ws, {:ping, payload}, _frag_state, _utf8, events) do
    _ = :gen_tcp.send(ws.socket, :cow_ws.masked_frame({:pong, payload}, @extensions))
    parse(%{ws | pings: ws.pings + 1}, [{:ping, payload} | events])
  end

  defp frame_done(ws, :pong, frag_state, utf8, events),
    do: frame_done(ws, {:pong, <<>>}, frag_state, utf8, events)

  defp frame_done(ws, {:pong, payload}, _frag_state, _utf8, events) do
    parse(ws, [{:pong, payload} | events])
  end

  defp frame_done(ws, :close, _frag_state, _utf8, events) do
    {:ok, Enum.reverse([{:close, nil, <<>>} | events]), %{ws | buffer: <<>>}}
  end

  defp frame_done(ws, {:close, code, reason}, _frag_state, _utf8, events) do
    # nothing after a close frame counts
    {:ok, Enum.reverse([{:close, code, reason} | events]), %{ws | buffer: <<>>}}
  end

  def close(%__MODULE__{socket: socket}), do: :gen_tcp.close(socket)
end

defmodule PacketFlow.Reactor do
  use GenServer
  require Logger

  alias PacketFlow.{Packet, Message, Result, JSON, WebSocket}

  defstruct [
    :socket,
    :handlers,
    :pending_requests,
    :sequence,
    :endpoint,
    # additions: the link (a PacketFlow.WebSocket), results matched by packet id when they
    # arrive with seq 0, our heartbeats waiting for their echo, options, counters
    :ws,
    :by_packet_id,
    :heartbeats,
    :heartbeat_ms,
    :trace,
    :node_heartbeats,
    :heartbeat_echoes,
    :pid
  ]

  @default_heartbeat_ms 30_000

  # Client API

  def start_link(opts) do
    GenServer.start_link(__MODULE__, opts, name: __MODULE__)
  end

  def register(group, element, handler_fun) when is_function(handler_fun, 1) do
    GenServer.call(__MODULE__, {:register, group, element, handler_fun})
  end

  def submit(packet_attrs, timeout \\ 30_000) do
    GenServer.call(__MODULE__, {:submit, packet_attrs}, timeout)
  end

  @doc "Sends a heartbeat and returns the %Message{} that echoes its seq."
  def heartbeat(timeout \\ 10_000) do
    GenServer.call(__MODULE__, :heartbeat, timeout)
  end

  @doc """
  Counters: the node's own heartbeats and the echoes of ours, WebSocket pings received
  (each answered with a pong), fragment frames reassembled.
  """
  def info do
    GenServer.call(__MODULE__, :info)
  end

  def stop do
    GenServer.stop(__MODULE__)
  end

  # GenServer Callbacks

  def init(opts) do
    endpoint = Keyword.fetch!(opts, :endpoint)

    state = %__MODULE__{
      socket: nil,
      handlers: %{},
      pending_requests: %{},
      sequence: 0,
      endpoint: endpoint,
      by_packet_id: %{},
      heartbeats: %{},
      heartbeat_ms: Keyword.get(opts, :heartbeat_ms, @default_heartbeat_ms),
      trace: Keyword.get(opts, :trace),
      node_heartbeats: 0,
      heartbeat_echoes: 0,
      pid: self()
    }

    {:ok, state, {:continue, :connect}}
  end

  def handle_continue(:connect, state) do
    case WebSocket.connect(state.endpoint) do
      {:ok, ws} ->
        schedule_heartbeat(state)
        state = %{state | socket: ws.socket, ws: ws}
        # bytes that came with the 101 response are frames already
        state = handle_tcp_data(<<>>, state)

        if state.socket != nil do
          :ok = :inet.setopts(ws.socket, active: :once)
          {:noreply, state}
        else
          {:stop, {:shutdown, :closed}, state}
        end

      {:error, reason} ->
        Logger.error("Failed to connect: #{inspect(reason)}")
        {:stop, {:connect_failed, reason}, state}
    end
  end

  def handle_call({:register, group, element, handler}, _from, state) do
    key = "#{group}:#{element}"
    handlers = Map.put(state.handlers, key, handler)
    {:reply, :ok, %{state | handlers: handlers}}
  end

  def handle_call({:submit, packet_attrs}, from, state) do
    packet = %Packet{
      version: "1.0",
      id: packet_attrs[:id] || PacketFlow.UUID.uuid4(),
      group: packet_attrs.group,
      element: packet_attrs.element,
      data: packet_attrs.data,
      priority: packet_attrs.priority,
      timeout_ms: packet_attrs[:timeout_ms],
      dependencies: packet_attrs[:dependencies],
      metadata: packet_attrs[:metadata]
    }

    seq = state.sequence + 1
    message = %Message{
      type: :submit,
      seq: seq,
      payload: packet
    }

    send_message(message, state)

    # Store pending request
    pending = Map.put(state.pending_requests, seq, {from, System.monotonic_time(:millisecond)})
    by_packet_id = Map.put(state.by_packet_id, packet.id, seq)

    {:noreply, %{state | sequence: seq, pending_requests: pending, by_packet_id: by_packet_id}}
  end

  def handle_call(:heartbeat, from, state) do
    seq = state.sequence + 1
    send_heartbeat(seq, state)
    {:noreply, %{state | sequence: seq, heartbeats: Map.put(state.heartbeats, seq, from)}}
  end

  def handle_call(:info, _from, state) do
    {:reply,
     %{node_heartbeats: state.node_heartbeats, heartbeat_echoes: state.heartbeat_echoes,
       pings: state.ws.pings,
       fragments: state.ws.fragments, sequence: state.sequence}, state}
  end

  def handle_info({:tcp, socket, data}, %{socket: socket} = state) do
    state = handle_tcp_data(data, state)

    if state.socket != nil do
      :ok = :inet.setopts(socket, active: :once)
      {:noreply, state}
    else
      {:stop, {:shutdown, :closed}, state}
    end
  end

  def handle_info({:tcp_closed, socket}, %{socket: socket} = state) do
    Logger.warning("PacketFlow link to #{state.endpoint} closed")
    {:stop, {:shutdown, :tcp_closed}, link_down(state, "link closed")}
  end

  def handle_info({:tcp_error, socket, reason}, %{socket: socket} = state) do
    Logger.error("PacketFlow link to #{state.endpoint} failed: #{inspect(reason)}")
    {:stop, {:shutdown, {:tcp_error, reason}}, link_down(state, "link failed: #{inspect(reason)}")}
  end

  # a spawned handler's result
  def handle_info({:send_message, message}, state) do
    if state.socket != nil, do: send_message(message, state)
    {:noreply, state}
  end

  def handle_info(:heartbeat, state) do
    seq = state.sequence + 1
    send_heartbeat(seq, state)
    schedule_heartbeat(state)
    # its echo is told apart from the node's own heartbeats by seq; unanswered ones are
    # forgotten after 100 more
    heartbeats =
      state.heartbeats
      |> Map.reject(fn {s, from} -> from == :periodic and s < seq - 100 end)
      |> Map.put(seq, :periodic)

    {:noreply, %{state | sequence: seq, heartbeats: heartbeats}}
  end

  def handle_info(_msg, state), do: {:noreply, state}

  def terminate(_reason, %{socket: socket, ws: ws}) when socket != nil do
    # the close handshake: our close frame, then wait briefly for the node's
    ws = WebSocket.send_close(ws, 1000, "")
    :inet.setopts(socket, active: false)
    wait_close(ws, System.monotonic_time(:millisecond) + 1_000)
    WebSocket.close(ws)
  end

  def terminate(_reason, _state), do: :ok

  # Private Functions

  defp wait_close(ws, deadline) do
    left = deadline - System.monotonic_time(:millisecond)

    with true <- left > 0,
         {:ok, data} <- :gen_tcp.recv(ws.socket, 0, left),
         {:ok, events, ws} <- WebSocket.handle_data(ws, data) do
      unless Enum.any?(events, &match?({:close, _, _}, &1)), do: wait_close(ws, deadline)
    end
  end

  defp handle_tcp_data(data, state) do
    case WebSocket.handle_data(state.ws, data) do
      {:ok, events, ws} ->
        Enum.reduce(events, %{state | ws: ws}, &handle_event/2)

      {:error, reason, events, ws} ->
        state = Enum.reduce(events, %{state | ws: ws}, &handle_event/2)
        Logger.error("PacketFlow: bad WebSocket data from #{state.endpoint}: #{inspect(reason)}")

        if state.socket != nil do
          ws = WebSocket.send_close(state.ws, 1002, "protocol error")
          WebSocket.close(ws)
        end

        link_down(state, "protocol error: #{inspect(reason)}")
    end
  end

  defp handle_event(_event, %{socket: nil} = state), do: state

  defp handle_event({:text, data}, state) do
    trace(state, {:in, data})

    case JSON.decode(data) do
      {:ok, %{"type" => _, "seq" => _, "payload" => _} = message_map} ->
        message = parse_message(message_map)
        {:noreply, state} = handle_websocket_message(message, state)
        state

      _ ->
        Logger.error("Failed to decode WebSocket message: #{data}")
        state
    end
  end

  defp handle_event({:binary, data}, state) do
    Logger.warning("PacketFlow: binary frame of #{byte_size(data)} bytes ignored")
    state
  end

  defp handle_event({:ping, payload}, state) do
    # the WebSocket layer has answered it with a pong already
    trace(state, {:ping, payload})
    state
  end

  defp handle_event({:pong, _payload}, state), do: state

  defp handle_event({:close, code, reason}, state) do
    trace(state, {:close, code, reason})
    ws = WebSocket.send_close(state.ws, code || 1000, "")
    WebSocket.close(ws)
    link_down(%{state | ws: ws}, "link closed by the endpoint (#{inspect(code)} #{reason})")
  end

  # the link is gone: whoever waits gets an error now rather than a timeout later
  defp link_down(state, why) do
    error = %{"code" => "closed", "message" => why}

    for {_seq, {from, _t0}} <- state.pending_requests, do: GenServer.reply(from, {:error, error})
    for {_seq, from} <- state.heartbeats, from != :periodic, do: GenServer.reply(from, {:error, error})

    %{state | socket: nil, pending_requests: %{}, by_packet_id: %{}, heartbeats: %{}}
  end

  defp handle_websocket_message(%Message{type: :submit, payload: packet}, state) do
    case to_packet(packet) do
      {:ok, packet} ->
        spawn(fn -> process_packet(packet, state) end)

      :error ->
        Logger.error("Submit with an unreadable packet: #{inspect(packet)}")
    end

    {:noreply, state}
  end

  defp handle_websocket_message(%Message{type: :result, seq: seq, payload: result}, state) do
    seq = if seq == 0, do: Map.get(state.by_packet_id, result["packet_id"], 0), else: seq

    case Map.pop(state.pending_requests, seq) do
      {{from, _timestamp}, pending} ->
        GenServer.reply(from, to_result(result))
        by_packet_id = Map.delete(state.by_packet_id, result["packet_id"])
        {:noreply, %{state | pending_requests: pending, by_packet_id: by_packet_id}}

      {nil, _} ->
        Logger.warning("Received result for unknown sequence: #{seq}")
        {:noreply, state}
    end
  end

  defp handle_websocket_message(%Message{type: :error, seq: seq, payload: error}, state) do
    case Map.pop(state.pending_requests, seq) do
      {{from, _timestamp}, pending} ->
        GenServer.reply(from, {:error, error})
        by_packet_id = :maps.filter(fn _id, s -> s != seq end, state.by_packet_id)
        {:noreply, %{state | pending_requests: pending, by_packet_id: by_packet_id}}

      {nil, _} ->
        Logger.warning("Received error for unknown sequence: #{seq}")
        {:noreply, state}
    end
  end

  defp handle_websocket_message(%Message{type: :heartbeat, seq: seq} = message, state) do
    # Heartbeat received, connection is healthy
    case Map.pop(state.heartbeats, seq) do
      {nil, _} ->
        {:noreply, %{state | node_heartbeats: state.node_heartbeats + 1}}

      {:periodic, heartbeats} ->
        {:noreply, %{state | heartbeats: heartbeats, heartbeat_echoes: state.heartbeat_echoes + 1}}

      {from, heartbeats} ->
        GenServer.reply(from, message)
        {:noreply, %{state | heartbeats: heartbeats, heartbeat_echoes: state.heartbeat_echoes + 1}}
    end
  end

  defp handle_websocket_message(%Message{type: type, seq: seq}, state) do
    Logger.warning("Unknown message type #{inspect(type)} (seq #{inspect(seq)})")
    {:noreply, state}
  end

  defp process_packet(%Packet{} = packet, state) do
    key = "#{packet.group}:#{packet.element}"

    case Map.get(state.handlers, key) do
      nil ->
        send_error(packet.id, "PF001", "No handler for #{key}", state)

      handler_fun ->
        start_time = System.monotonic_time(:millisecond)

        try do
          result_data = handler_fun.(packet.data)
          duration_ms = System.monotonic_time(:millisecond) - start_time

          result = %Result{
            packet_id: packet.id,
            status: :success,
            data: result_data,
            duration_ms: duration_ms
          }

          # encoded here, so that a value JSON cannot hold fails this packet (PF500)
          # rather than the reactor
          send_result(result, state)
        rescue
          error ->
            duration_ms = System.monotonic_time(:millisecond) - start_time

            result = %Result{
              packet_id: packet.id,
              status: :error,
              error: %{
                code: "PF500",
                message: Exception.message(error)
              },
              duration_ms: duration_ms
            }

            send_result(result, state)
        catch
          kind, reason ->
            duration_ms = System.monotonic_time(:millisecond) - start_time

            result = %Result{
              packet_id: packet.id,
              status: :error,
              error: %{code: "PF500", message: "#{kind}: #{inspect(reason)}"},
              duration_ms: duration_ms
            }

            send_result(result, state)
        end
    end
  end

  defp send_result(result, state) do
    message = %Message{
      type: :result,
      seq: 0,  # Results don't need sequence numbers
      payload: result
    }

    json = JSON.encode!(message)
    send(state.pid, {:send_message, {:json, json}})
  end

  defp send_error(packet_id, code, message, state) do
    result = %Result{
      packet_id: packet_id,
      status: :error,
      error: %{code: code, message: message},
      duration_ms: 0
    }

    send_result(result, state)
  end

  defp send_heartbeat(seq, state) do
    message = %Message{
      type: :heartbeat,
      seq: seq,
      payload: %{timestamp: System.system_time(:millisecond)}
    }

    send_message(message, state)
  end

  defp send_message(_message, %{socket: nil}), do: :ok

  defp send_message({:json, json}, state) do
    trace(state, {:out, json})
    WebSocket.send_text(state.ws, json)
  end

  defp send_message(%Message{} = message, state) do
    send_message({:json, JSON.encode!(message)}, state)
  end

  defp schedule_heartbeat(state) do
    Process.send_after(self(), :heartbeat, state.heartbeat_ms)
  end

  defp trace(%{trace: nil}, _event), do: :ok
  defp trace(%{trace: pid}, event), do: send(pid, {:packetflow, event})

  defp parse_message(%{
         "type" => type,
         "seq" => seq,
         "payload" => payload
       }) do
    %Message{
      type: message_type(type),
      seq: seq,
      payload: payload
    }
  end

  # String.to_atom/1 in the spec; only the four types become atoms here
  defp message_type(type) when type in ["submit", "result", "error", "heartbeat"],
    do: String.to_existing_atom(type)

  defp message_type(type), do: type

  defp to_packet(%{"id" => id, "group" => group, "element" => element} = map) when is_binary(id) do
    {:ok,
     %Packet{
       version: map["version"],
       id: id,
       group: group,
       element: element,
       data: map["data"],
       priority: map["priority"],
       timeout_ms: map["timeout_ms"],
       dependencies: map["dependencies"],
       metadata: map["metadata"]
     }}
  end

  defp to_packet(_), do: :error

  defp to_result(%{} = map) do
    error =
      case map["error"] do
        %{} = e -> %{code: e["code"], message: e["message"]}
        other -> other
      end

    %Result{
      packet_id: map["packet_id"],
      status: result_status(map["status"]),
      data: map["data"],
      error: error,
      duration_ms: map["duration_ms"]
    }
  end

  defp result_status("success"), do: :success
  defp result_status("error"), do: :error
  defp result_status(other), do: other
end
