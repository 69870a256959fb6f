//! User-Agent classification for the event's `device`, `os` and `bot` fields.
//!
//! Bots come from the `isbot` crate's maintained pattern list (search engines,
//! social and chat link previews), plus an empty User-Agent; device and OS from
//! `woothee`. Bots are still redirected: the flag only marks their events.

use woothee::parser::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Desktop,
    Mobile,
    Tablet,
    Bot,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Bot => "bot",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Ios,
    Android,
    Windows,
    Macos,
    Linux,
    Other,
}

impl Os {
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Ios => "ios",
            Os::Android => "android",
            Os::Windows => "windows",
            Os::Macos => "macos",
            Os::Linux => "linux",
            Os::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub device: Device,
    pub os: Os,
    pub bot: bool,
}

/// Built once per server: compiling the bot patterns is the expensive part.
pub struct Classifier {
    bots: isbot::Bots,
    parser: Parser,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Classifier")
    }
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new()
    }
}

impl Classifier {
    pub fn new() -> Classifier {
        let mut bots = isbot::Bots::default();
        // The previews the SPEC names, kept explicit in case the crate's list changes.
        bots.append(&[
            "facebookexternalhit",
            "slackbot",
            "twitterbot",
            "whatsapp",
            "discordbot",
            "linkedinbot",
            "telegrambot",
        ]);
        Classifier {
            bots,
            parser: Parser::new(),
        }
    }

    /// Classifies a User-Agent, remembering recent answers per thread: traffic
    /// repeats a few thousand agents, and the full classification (a regex over
    /// hundreds of bot patterns, then woothee) costs microseconds.
    pub fn classify(&self, user_agent: Option<&str>) -> Client {
        const CAPACITY: usize = 4096;
        thread_local! {
            static RECENT: std::cell::RefCell<hashbrown::HashMap<Box<str>, Client>> =
                std::cell::RefCell::new(hashbrown::HashMap::with_capacity(CAPACITY));
        }
        let ua = user_agent.unwrap_or("");
        if let Some(known) = RECENT.with(|recent| recent.borrow().get(ua).copied()) {
            return known;
        }
        let client = self.classify_uncached(ua);
        // Real agents are a few hundred bytes; a huge one is not worth keeping.
        if ua.len() > 512 {
            return client;
        }
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            // Bounded: when full, start again rather than grow with hostile input.
            if recent.len() >= CAPACITY {
                recent.clear();
            }
            recent.insert(ua.into(), client);
        });
        client
    }

    /// The full classification, without the per-thread memory (for benchmarks).
    pub fn classify_uncached(&self, ua: &str) -> Client {
        let ua = ua.trim();
        let parsed = if ua.is_empty() {
            None
        } else {
            self.parser.parse(ua)
        };
        let os = parsed
            .as_ref()
            .map_or_else(|| os_from_ua(ua), |r| os_from_woothee(r.os, ua));
        let bot = ua.is_empty()
            || parsed.as_ref().is_some_and(|r| r.category == "crawler")
            || self.bots.is_bot(ua);
        let device = if bot {
            Device::Bot
        } else if is_tablet(ua, os) {
            Device::Tablet
        } else if parsed
            .as_ref()
            .is_some_and(|r| matches!(r.category, "smartphone" | "mobilephone"))
            || matches!(os, Os::Ios | Os::Android)
        {
            Device::Mobile
        } else {
            Device::Desktop
        };
        Client { device, os, bot }
    }
}

fn os_from_woothee(name: &str, ua: &str) -> Os {
    match name {
        "iPhone" | "iPad" | "iPod" | "iOS" => Os::Ios,
        "Android" => Os::Android,
        "Mac OSX" | "MacOS" | "OSX" | "Mac OS Classic" => Os::Macos,
        "Linux" | "ChromeOS" => Os::Linux,
        n if n.starts_with("Windows") => Os::Windows,
        _ => os_from_ua(ua),
    }
}

/// For agents woothee does not know (many bots and in-app browsers).
fn os_from_ua(ua: &str) -> Os {
    if ua.contains("iPhone") || ua.contains("iPad") || ua.contains("iPod") {
        Os::Ios
    } else if ua.contains("Android") {
        Os::Android
    } else if ua.contains("Windows") {
        Os::Windows
    } else if ua.contains("Macintosh") || ua.contains("Mac OS X") {
        Os::Macos
    } else if ua.contains("Linux") || ua.contains("X11") {
        Os::Linux
    } else {
        Os::Other
    }
}

/// iPads, and Android devices without "Mobile" (Google's own rule for tablets).
fn is_tablet(ua: &str, os: Os) -> bool {
    ua.contains("iPad") || (os == Os::Android && !ua.contains("Mobile"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
    const LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

    #[test]
    fn browsers_get_device_and_os() {
        let c = Classifier::new();
        let cases = [
            (IPHONE, Device::Mobile, Os::Ios),
            (IPAD, Device::Tablet, Os::Ios),
            (ANDROID_PHONE, Device::Mobile, Os::Android),
            (ANDROID_TABLET, Device::Tablet, Os::Android),
            (WINDOWS, Device::Desktop, Os::Windows),
            (MAC, Device::Desktop, Os::Macos),
            (LINUX, Device::Desktop, Os::Linux),
        ];
        for (ua, device, os) in cases {
            let got = c.classify(Some(ua));
            assert_eq!((got.device, got.os, got.bot), (device, os, false), "{ua}");
        }
    }

    #[test]
    fn remembered_answers_are_the_same_answers() {
        let c = Classifier::new();
        for _ in 0..3 {
            assert_eq!(c.classify(Some(IPHONE)).os, Os::Ios);
            assert!(c.classify(Some("Twitterbot/1.0")).bot);
            assert!(!c.classify(Some(WINDOWS)).bot);
        }
        let huge = format!("{WINDOWS} {}", "x".repeat(4096));
        assert_eq!(c.classify(Some(&huge)).os, Os::Windows);
    }

    #[test]
    fn crawlers_previews_and_empty_agents_are_bots() {
        let c = Classifier::new();
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Twitterbot/1.0",
            "WhatsApp/2.23.20.0 A",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "TelegramBot (like TwitterBot)",
            "",
            "   ",
        ] {
            let got = c.classify(Some(ua));
            assert!(got.bot, "{ua:?} not a bot");
            assert_eq!(got.device, Device::Bot, "{ua:?}");
        }
        assert!(c.classify(None).bot, "a missing User-Agent is a bot");
    }
}
