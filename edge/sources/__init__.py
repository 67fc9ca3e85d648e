"""Frame sources: a watched folder, a camera or video through OpenCV, and an MQTT trigger topic."""
