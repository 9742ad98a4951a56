#!/usr/bin/env python3
"""Golden vectors for Cairn's Meshtastic serial API codec, made with the official client.

The protobufs come from the `meshtastic` package on PyPI (the same generated classes its
client uses); the serial framing (0x94 0xC3, length u16 big-endian) is added here, as the
client's StreamInterface._sendToRadioImpl does. The output, meshtastic_vectors.txt beside this
script, is what firmware-bridge/tests/meshtastic.rs reads.

Regenerate:

    python3 -m venv /tmp/mtvenv && /tmp/mtvenv/bin/pip install meshtastic
    /tmp/mtvenv/bin/python firmware-bridge/tests/vectors/meshtastic_vectors.py \
        > firmware-bridge/tests/vectors/meshtastic_vectors.txt

Each vector is one line, `name hex`. Names starting with `data_` are bare `Data` protobufs
(what the firmware encrypts and puts on air), without framing. Lines starting with `#` are
comments.
"""

from importlib.metadata import version

from meshtastic.protobuf import (
    channel_pb2,
    config_pb2,
    mesh_pb2,
    module_config_pb2,
    portnums_pb2,
)

PRIVATE_APP = portnums_pb2.PortNum.PRIVATE_APP
BROADCAST = 0xFFFFFFFF
NODE = 0x1A2B3C4D  # the device's own node number in these vectors
PEER = 0x55667788  # another node, heard on air
NONCE = 0x1234ABCD  # want_config_id / config_complete_id
PACKET_ID = 0x0A0B0C0D  # the id of the packet Cairn sends

# A Cairn frame with the framing's magic bytes inside, to show they need no escaping.
FRAME = b"cairn frame \x94\xc3\x00\x05 inside"
MAX_FRAME = bytes(range(231))


def framed(message) -> bytes:
    body = message.SerializeToString()
    assert len(body) <= 512
    return bytes([0x94, 0xC3, len(body) >> 8, len(body) & 0xFF]) + body


def packet(**fields) -> mesh_pb2.MeshPacket:
    # `from` is a Python keyword, so the fields go in as a dict.
    return mesh_pb2.MeshPacket(**fields)


def vectors():
    yield "to_radio_want_config", framed(mesh_pb2.ToRadio(want_config_id=NONCE))
    yield "to_radio_heartbeat", framed(mesh_pb2.ToRadio(heartbeat=mesh_pb2.Heartbeat()))
    yield "to_radio_disconnect", framed(mesh_pb2.ToRadio(disconnect=True))
    # What MeshtasticHost::send_frame writes: broadcast, channel 0, hop_limit 0, no ack.
    yield "to_radio_private_app", framed(
        mesh_pb2.ToRadio(
            packet=packet(
                to=BROADCAST,
                channel=0,
                id=PACKET_ID,
                hop_limit=0,
                want_ack=False,
                decoded=mesh_pb2.Data(portnum=PRIVATE_APP, payload=FRAME),
            )
        )
    )
    yield "to_radio_private_app_max", framed(
        mesh_pb2.ToRadio(
            packet=packet(
                to=BROADCAST,
                id=0xFFFFFFFE,
                decoded=mesh_pb2.Data(portnum=PRIVATE_APP, payload=MAX_FRAME),
            )
        )
    )

    yield "from_radio_my_info", framed(
        mesh_pb2.FromRadio(
            id=1,
            my_info=mesh_pb2.MyNodeInfo(
                my_node_num=NODE,
                reboot_count=7,
                min_app_version=30200,
                pio_env="heltec-v3",
                nodedb_count=12,
            ),
        )
    )
    yield "from_radio_metadata", framed(
        mesh_pb2.FromRadio(
            id=2,
            metadata=mesh_pb2.DeviceMetadata(
                firmware_version="2.5.6.d55c08d",
                device_state_version=23,
                canShutdown=True,
                hasWifi=True,
                hasBluetooth=True,
                hw_model=mesh_pb2.HardwareModel.HELTEC_V3,
                hasPKC=True,
            ),
        )
    )
    yield "from_radio_node_info", framed(
        mesh_pb2.FromRadio(
            node_info=mesh_pb2.NodeInfo(
                num=NODE,
                user=mesh_pb2.User(
                    id="!1a2b3c4d",
                    long_name="Meshtastic 3c4d",
                    short_name="3c4d",
                    hw_model=mesh_pb2.HardwareModel.HELTEC_V3,
                ),
                last_heard=1700000000,
                is_favorite=True,
            )
        )
    )
    yield "from_radio_channel_primary", framed(
        mesh_pb2.FromRadio(
            channel=channel_pb2.Channel(
                index=0,
                settings=channel_pb2.ChannelSettings(psk=b"\x01"),
                role=channel_pb2.Channel.Role.PRIMARY,
            )
        )
    )
    yield "from_radio_config_lora", framed(
        mesh_pb2.FromRadio(
            config=config_pb2.Config(
                lora=config_pb2.Config.LoRaConfig(
                    use_preset=True,
                    modem_preset=config_pb2.Config.LoRaConfig.ModemPreset.LONG_FAST,
                    region=config_pb2.Config.LoRaConfig.RegionCode.EU_868,
                    hop_limit=3,
                    tx_enabled=True,
                    tx_power=27,
                    config_ok_to_mqtt=True,
                )
            )
        )
    )
    # Config sections and FromRadio kinds that Cairn does not model: they must decode as
    # "nothing we know", not as errors.
    yield "from_radio_config_device", framed(
        mesh_pb2.FromRadio(
            config=config_pb2.Config(
                device=config_pb2.Config.DeviceConfig(
                    role=config_pb2.Config.DeviceConfig.Role.CLIENT_MUTE,
                    node_info_broadcast_secs=10800,
                )
            )
        )
    )
    yield "from_radio_module_config", framed(
        mesh_pb2.FromRadio(
            moduleConfig=module_config_pb2.ModuleConfig(
                mqtt=module_config_pb2.ModuleConfig.MQTTConfig(
                    enabled=True, address="mqtt.example.invalid"
                )
            )
        )
    )
    yield "from_radio_config_complete", framed(
        mesh_pb2.FromRadio(id=42, config_complete_id=NONCE)
    )

    # A Cairn frame heard on air, as current firmware hands it over (bitfield included).
    yield "from_radio_private_app", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": PEER},
                to=BROADCAST,
                id=0xDEADBEEF,
                rx_time=1700000123,
                rx_snr=6.25,
                rx_rssi=-97,
                hop_limit=0,
                hop_start=0,
                decoded=mesh_pb2.Data(portnum=PRIVATE_APP, payload=FRAME, bitfield=0),
                transport_mechanism=mesh_pb2.MeshPacket.TransportMechanism.TRANSPORT_LORA,
                relay_node=0x88,
            )
        )
    )
    # Fields Cairn does not model (delayed, public_key, tx_after, Data.dest/emoji/reply_id):
    # skipped on decode.
    yield "from_radio_private_app_unknown_fields", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": PEER},
                to=BROADCAST,
                id=0xDEADBEF0,
                rx_snr=-7.5,
                rx_rssi=-120,
                delayed=mesh_pb2.MeshPacket.Delayed.DELAYED_BROADCAST,
                public_key=bytes(32),
                tx_after=5,
                decoded=mesh_pb2.Data(
                    portnum=PRIVATE_APP,
                    payload=b"x",
                    dest=0x01020304,
                    reply_id=9,
                    emoji=1,
                ),
            )
        )
    )
    yield "from_radio_text_message", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": PEER},
                to=BROADCAST,
                id=0xDEADBEF1,
                rx_rssi=-80,
                decoded=mesh_pb2.Data(
                    portnum=portnums_pb2.PortNum.TEXT_MESSAGE_APP, payload=b"hello mesh"
                ),
            )
        )
    )
    yield "from_radio_encrypted", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": PEER},
                to=BROADCAST,
                id=0xDEADBEF2,
                channel=0x08,
                encrypted=bytes.fromhex("8f1e2d3c4b5a6978"),
            )
        )
    )
    # The device's own frame echoed back to the client.
    yield "from_radio_own_private_app", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": NODE},
                to=BROADCAST,
                id=PACKET_ID,
                decoded=mesh_pb2.Data(portnum=PRIVATE_APP, payload=FRAME),
            )
        )
    )
    # What the firmware's Router::abortSendAndNak hands the client for a packet that did not
    # fit: a routing error from and to the device itself, answering our packet id.
    yield "from_radio_routing_nak", framed(
        mesh_pb2.FromRadio(
            packet=packet(
                **{"from": NODE},
                to=NODE,
                id=0x00C0FFEE,
                priority=mesh_pb2.MeshPacket.Priority.ACK,
                decoded=mesh_pb2.Data(
                    portnum=portnums_pb2.PortNum.ROUTING_APP,
                    payload=mesh_pb2.Routing(
                        error_reason=mesh_pb2.Routing.Error.TOO_LARGE
                    ).SerializeToString(),
                    request_id=PACKET_ID,
                ),
            )
        )
    )
    yield "from_radio_queue_status", framed(
        mesh_pb2.FromRadio(
            queueStatus=mesh_pb2.QueueStatus(
                res=0, free=15, maxlen=16, mesh_packet_id=PACKET_ID
            )
        )
    )
    yield "from_radio_log_record", framed(
        mesh_pb2.FromRadio(
            log_record=mesh_pb2.LogRecord(
                message="Radio TX failed",
                time=1700000200,
                source="RadioIf",
                level=mesh_pb2.LogRecord.Level.ERROR,
            )
        )
    )
    yield "from_radio_client_notification", framed(
        mesh_pb2.FromRadio(
            clientNotification=mesh_pb2.ClientNotification(
                reply_id=PACKET_ID,
                level=mesh_pb2.LogRecord.Level.WARNING,
                message="Duty cycle limit exceeded. You can send again in 5 mins",
            )
        )
    )
    yield "from_radio_rebooted", framed(mesh_pb2.FromRadio(rebooted=True))

    # What current firmware encrypts and puts on air after the 16-byte header for a Cairn
    # frame of 231 and 232 bytes: 239 bytes fits a 255-byte LoRa packet, 240 does not.
    for size in (231, 232):
        data = mesh_pb2.Data(portnum=PRIVATE_APP, payload=bytes(size), bitfield=0)
        yield f"data_on_air_{size}", data.SerializeToString()


def main():
    print(f"# made by meshtastic_vectors.py with meshtastic {version('meshtastic')}, "
          f"protobuf {version('protobuf')}")
    for name, data in vectors():
        print(name, data.hex())


if __name__ == "__main__":
    main()
