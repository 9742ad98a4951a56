//! The RNode host against the virtual RNode (`RnodeDevice`), in memory: the handshake
//! completes, the radio ends up configured as asked, and frames cross in both directions with
//! their signal figures and the firmware's flow control.

use cairn_firmware_bridge::rnode::{RnodeConfig, RnodeHost};
use cairn_firmware_bridge::rnode_device::{rnode_preamble_symbols, RnodeDevice, RnodeDeviceConfig};
use cairn_firmware_bridge::{BridgeError, BridgeEvent, DeviceSide, Firmware, LoraParams};

/// Moves bytes both ways until neither side has anything to say.
fn converse(host: &mut RnodeHost, device: &mut RnodeDevice, now_ms: u64) {
    for _ in 0..256 {
        let mut quiet = true;
        while let Some(bytes) = host.poll_serial() {
            device.handle_host(now_ms, &bytes);
            quiet = false;
        }
        while let Some(bytes) = device.poll_host() {
            host.handle_serial(now_ms, &bytes);
            quiet = false;
        }
        if quiet {
            return;
        }
    }
    panic!("host and device never went quiet");
}

fn events(host: &mut RnodeHost) -> Vec<BridgeEvent> {
    std::iter::from_fn(|| host.poll_event()).collect()
}

fn configured(params: LoraParams) -> (RnodeHost, RnodeDevice) {
    let mut host = RnodeHost::new(params, RnodeConfig::default());
    let mut device = RnodeDevice::default();
    host.reset(0);
    converse(&mut host, &mut device, 5);
    (host, device)
}

#[test]
fn host_configures_the_virtual_rnode_and_reports_ready() {
    let params = LoraParams::sf7();
    let (mut host, device) = configured(params);
    assert!(host.is_ready());
    assert!(device.is_radio_on());
    let on_air = device.lora_params().expect("the radio is on");
    assert_eq!(on_air.frequency_hz, params.frequency_hz);
    assert_eq!(on_air.bandwidth_hz, params.bandwidth_hz);
    assert_eq!(on_air.spreading_factor, params.spreading_factor);
    assert_eq!(on_air.coding_rate, params.coding_rate);
    assert_eq!(on_air.tx_power_dbm, params.tx_power_dbm);

    let events = events(&mut host);
    let Some(BridgeEvent::Ready(info)) = events
        .iter()
        .find(|event| matches!(event, BridgeEvent::Ready(_)))
    else {
        panic!("expected Ready, got {events:?}");
    };
    let (major, minor) = RnodeDeviceConfig::default().firmware_version;
    assert_eq!(info.firmware, format!("RNode {major}.{minor:02}"));
    assert_eq!(info.max_frame, 254);
    // The firmware chose the preamble and said so; the host reports and paces by it.
    let preamble = rnode_preamble_symbols(
        params.bandwidth_hz,
        params.spreading_factor,
        params.coding_rate,
    );
    assert_eq!(info.lora.map(|lora| lora.preamble_symbols), Some(preamble));
    assert!(
        !events
            .iter()
            .any(|event| matches!(event, BridgeEvent::Warning(_))),
        "{events:?}"
    );
}

#[test]
fn frames_cross_both_ways_with_signal_figures_and_flow_control() {
    let (mut host, mut device) = configured(LoraParams::sf7());
    events(&mut host);

    host.send_frame(b"first").expect("ready");
    host.send_frame(b"second").expect("ready");
    converse(&mut host, &mut device, 10);
    assert_eq!(device.poll_transmit(), Some(b"first".to_vec()));
    assert_eq!(device.poll_transmit(), None, "the host waits for READY");

    // The transmission ends; the device says READY and the host sends the next frame.
    device.handle_transmitted();
    converse(&mut host, &mut device, 400);
    assert!(events(&mut host).contains(&BridgeEvent::TxReady));
    assert_eq!(device.poll_transmit(), Some(b"second".to_vec()));
    device.handle_transmitted();

    // A frame heard on air reaches the host with its RSSI and SNR.
    device.handle_received(b"hello from afar", -97, -6.25);
    converse(&mut host, &mut device, 800);
    let received: Vec<_> = events(&mut host)
        .into_iter()
        .filter(|event| matches!(event, BridgeEvent::Received { .. }))
        .collect();
    assert_eq!(
        received,
        vec![BridgeEvent::Received {
            frame: b"hello from afar".to_vec(),
            rssi_dbm: Some(-97),
            snr_db: Some(-6.25),
        }]
    );
}

#[test]
fn power_the_virtual_board_cannot_do_is_refused_by_name() {
    let params = LoraParams {
        tx_power_dbm: 22,
        ..LoraParams::sf7()
    };
    let (mut host, device) = configured(params);
    assert!(!host.is_ready());
    assert!(!device.is_radio_on());
    let due = host.poll_timeout().expect("the failure is due");
    match host.handle_timeout(due) {
        Err(BridgeError::Device(text)) => {
            assert!(text.contains("TX power"), "{text}");
            assert!(text.contains("22 dBm"), "{text}");
        }
        other => panic!("expected a device error, got {other:?}"),
    }
}

#[test]
fn a_reset_command_to_the_device_is_recovered_from() {
    let (mut host, mut device) = configured(LoraParams::sf7());
    events(&mut host);
    // Someone resets the board (0x55 0xF8): it reboots unconfigured and says so.
    device.handle_host(20, &[0xC0, 0x55, 0xF8, 0xC0]);
    converse(&mut host, &mut device, 20);
    assert!(host.is_ready());
    assert!(device.is_radio_on());
    let events = events(&mut host);
    assert!(
        matches!(events.last(), Some(BridgeEvent::Ready(_))),
        "{events:?}"
    );
}
